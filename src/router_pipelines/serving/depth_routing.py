"""pyfunc wrapper of the token-routed LMs (family ``depth_routing``: ``mod_lm``, ``dtf_lm``).

The base wrapper's greedy continuation; the model's ``generate`` routes causally (each token
decides from its own stop-gradient predictor logit, so sampling never looks ahead) with a KV
cache in which every routed block keeps only the tokens it computed::

    lm = mlflow.pyfunc.load_model("models:/mod_lm/latest")
    lm.predict(["The json module"], params={"max_new_tokens": 20})

Logged as model code like :mod:`router_pipelines.serving.causal_lm`.
"""

from __future__ import annotations

from mlflow.models import ModelSignature, infer_signature, set_model

from router_pipelines.serving.causal_lm import PARAMS, CausalLMModel


def signature() -> ModelSignature:
    """Prompts in, continuations out, params ``max_new_tokens``."""
    return infer_signature(["a prompt"], ["a continuation"], params=PARAMS)


class DepthRoutingLMModel(CausalLMModel):
    """:class:`CausalLMModel` over a :class:`DepthRoutingLM` (causal routing at generation)."""

    def load_context(self, context) -> None:
        super().load_context(context)
        self.bundle.model.set_routing_mode("causal")


set_model(DepthRoutingLMModel())
