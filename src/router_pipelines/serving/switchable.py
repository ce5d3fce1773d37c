"""pyfunc wrapper of the switchable-precision LM (family ``switchable``).

The base wrapper's greedy continuation, run at the weight width asked for with the ``bits``
param: ``"2"`` .. ``"8"`` or ``"fp"`` (default, full precision); a width the model was not
trained for is a ``ValueError`` from the model naming the widths it has::

    sw = mlflow.pyfunc.load_model("models:/switchable_lm/latest")
    sw.predict(["The json module"], params={"max_new_tokens": 20, "bits": "4"})

Logged as model code like :mod:`router_pipelines.serving.causal_lm`.
"""

from __future__ import annotations

from typing import Any

from mlflow.models import ModelSignature, infer_signature, set_model

from router_pipelines.config import check_choice
from router_pipelines.serving.causal_lm import PARAMS as CAUSAL_LM_PARAMS
from router_pipelines.serving.causal_lm import CausalLMModel

BITS = ("2", "3", "4", "5", "6", "7", "8", "fp")
PARAMS: dict[str, Any] = {**CAUSAL_LM_PARAMS, "bits": "fp"}


def signature() -> ModelSignature:
    """Prompts in, continuations out, params :data:`PARAMS` (``max_new_tokens``, ``bits``)."""
    return infer_signature(["a prompt"], ["a continuation"], params=PARAMS)


class SwitchableLMModel(CausalLMModel):
    """:class:`CausalLMModel` at the precision given by the ``bits`` param."""

    def predict(self, context, model_input, params=None):
        params = params or {}
        bits = str(params.get("bits", PARAMS["bits"])).strip().lower()
        check_choice("bits", bits, BITS)
        self.bundle.model.set_precision(None if bits == "fp" else int(bits))
        return super().predict(context, model_input, params)


set_model(SwitchableLMModel())
