"""pyfunc wrapper of the layer-wise precision router (family ``precision_router``).

Text in; out, per prompt, the greedy continuation and the bits the router chose per layer::

    pr = mlflow.pyfunc.load_model("models:/precision_router/latest")
    pr.predict(["The json module"], params={"max_new_tokens": 20, "price": 0.0})
    #    continuation                bits_per_layer   mean_bits
    # 0  " is a ..."                 "[8.0, 4.0, ...]"  5.5

Per-sequence routing decides once from the prompt, and generation runs at those widths;
per-token routing decides at every token (``bits_per_layer`` is then the mean over the prompt
and the generated tokens). ``price`` moves the router along its budget (higher: fewer bits;
the evaluation's calibrated prices are in the version's ``router_results.json``).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from mlflow.models import ModelSignature, infer_signature, set_model

from router_pipelines.serving.causal_lm import PARAMS as CAUSAL_LM_PARAMS
from router_pipelines.serving.causal_lm import CausalLMModel
from router_pipelines.serving.generation import check_max_new_tokens, prompts_from

PARAMS: dict[str, Any] = {**CAUSAL_LM_PARAMS, "price": 0.0}
OUTPUT_EXAMPLE = pd.DataFrame(
    {"continuation": ["a continuation"], "bits_per_layer": ["[8.0, 4.0]"], "mean_bits": [6.0]}
)


def signature() -> ModelSignature:
    """Prompts in; continuation, bits per layer (JSON) and mean bits out; params :data:`PARAMS`."""
    return infer_signature(["a prompt"], OUTPUT_EXAMPLE, params=PARAMS)


def routed_continuations(bundle: Any, prompts: list[str], max_new_tokens: int, price: float):
    """The continuation and the widths used per layer for each prompt (no MLflow here)."""
    import torch

    router, tokenizer = bundle.model, bundle.tokenizer
    rows = []
    context = getattr(router.config, "max_position_embeddings", None) or 1024
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode(), router.routing("infer", price=price), router.tallying() as tally:
        for prompt in prompts:
            ids = dict(tokenizer(prompt, return_tensors="pt"))
            if ids["input_ids"].shape[1] == 0:
                start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else pad
                ids = {
                    "input_ids": torch.tensor([[start]]),
                    "attention_mask": torch.ones(1, 1, dtype=torch.long),
                }
            ids = {k: v[:, -(context - 1) :] for k, v in ids.items()}
            room = min(max_new_tokens, context - ids["input_ids"].shape[1])
            tally.counts.zero_()
            generated = router.generate(
                **ids, max_new_tokens=room, do_sample=False, pad_token_id=pad
            )
            layer_bits = [round(b, 4) for b in tally.layer_bits()]
            rows.append(
                {
                    "continuation": tokenizer.decode(
                        generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True
                    ),
                    "bits_per_layer": json.dumps(layer_bits),
                    "mean_bits": tally.mean_bits(),
                }
            )
    return pd.DataFrame(rows)


class PrecisionRouterModel(CausalLMModel):
    """Greedy continuation by the routed multi-precision model, with the bits it used."""

    def predict(self, context, model_input, params=None):
        params = params or {}
        max_new_tokens = check_max_new_tokens(
            params.get("max_new_tokens", PARAMS["max_new_tokens"])
        )
        price = float(params.get("price", PARAMS["price"]))
        return routed_continuations(self.bundle, prompts_from(model_input), max_new_tokens, price)


set_model(PrecisionRouterModel())
