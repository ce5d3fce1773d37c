"""pyfunc wrapper of the base causal LM (family ``causal_lm``): text in, greedy continuation out.

MLflow logs this file as the model's code ("models from code") and runs it to build the model
when it is loaded, so nothing is pickled. The bundle folder (safetensors, tokenizer,
``router_pipelines.json``) is the model's artifact ``model``::

    lm = mlflow.pyfunc.load_model("models:/base_lm/latest")
    lm.predict(["The json module"], params={"max_new_tokens": 20})
    lm.unwrap_python_model().bundle  # the ModelBundle

Running the file needs ``router_pipelines`` installed where the model is served.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.models import ModelSignature, infer_signature, set_model
from mlflow.pyfunc import PythonModel

from router_pipelines.models.bundle import load_bundle
from router_pipelines.serving.generation import (
    DEFAULT_MAX_NEW_TOKENS,
    check_max_new_tokens,
    greedy_continuations,
    prompts_from,
)

# The params this wrapper accepts, with their defaults (they become the signature's params).
PARAMS: dict[str, Any] = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS}


def signature() -> ModelSignature:
    """Prompts (strings) in, continuations (strings) out, params :data:`PARAMS`."""
    return infer_signature(["a prompt"], ["a continuation"], params=PARAMS)


class CausalLMModel(PythonModel):
    """Greedy continuation of each prompt by a saved :class:`ModelBundle`."""

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts["model"]))
        self.bundle.model.eval()

    # No type hints on predict: MLflow would infer (and enforce) a signature from them.
    def predict(self, context, model_input, params=None):
        params = params or {}
        max_new_tokens = check_max_new_tokens(
            params.get("max_new_tokens", PARAMS["max_new_tokens"])
        )
        return greedy_continuations(self.bundle, prompts_from(model_input), max_new_tokens)


# Runs when MLflow executes this file as model code (logging and loading); an ordinary import
# only records the instance in MLflow's "model being logged" slot, which nothing else reads.
set_model(CausalLMModel())
