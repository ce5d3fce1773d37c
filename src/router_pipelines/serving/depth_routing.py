"""pyfunc wrapper of the token-routed LMs (family ``depth_routing``: ``mod_lm``, ``dtf_lm``).

Prompts are generated in batches: left-padded with an attention mask, greedy, with a KV cache
in which every routed block keeps only the tokens it computed, routed causally (each token
decides from its own stop-gradient predictor logit, so sampling never looks ahead; padding
tokens are never attended and stay out of DTF's moving average). A batch gives each prompt
the tokens it gets alone (tested; :func:`~router_pipelines.serving.generation.greedy_continuations`)::

    lm = mlflow.pyfunc.load_model("models:/mod_lm/latest")
    lm.predict(["The json module", "A list"], params={"max_new_tokens": 20, "batch_size": 8})

Logged as model code like :mod:`router_pipelines.serving.causal_lm`.
"""

from __future__ import annotations

from typing import Any

from mlflow.models import ModelSignature, infer_signature, set_model

from router_pipelines.serving.causal_lm import PARAMS as CAUSAL_LM_PARAMS
from router_pipelines.serving.causal_lm import CausalLMModel
from router_pipelines.serving.generation import (
    check_count_param,
    check_max_new_tokens,
    greedy_continuations,
    prompts_from,
)

PARAMS: dict[str, Any] = {**CAUSAL_LM_PARAMS, "batch_size": 8}


def signature() -> ModelSignature:
    """Prompts in, continuations out, params ``max_new_tokens`` and ``batch_size``."""
    return infer_signature(["a prompt"], ["a continuation"], params=PARAMS)


class DepthRoutingLMModel(CausalLMModel):
    """Batched, cached, causally routed generation by a saved :class:`DepthRoutingLM`."""

    def load_context(self, context) -> None:
        super().load_context(context)
        self.bundle.model.set_routing_mode("causal")

    # No type hints on predict: MLflow would infer (and enforce) a signature from them.
    def predict(self, context, model_input, params=None):
        params = params or {}
        max_new_tokens = check_max_new_tokens(
            params.get("max_new_tokens", PARAMS["max_new_tokens"])
        )
        batch_size = check_count_param("batch_size", params.get("batch_size", PARAMS["batch_size"]))
        return greedy_continuations(
            self.bundle, prompts_from(model_input), max_new_tokens, batch_size
        )


set_model(DepthRoutingLMModel())
