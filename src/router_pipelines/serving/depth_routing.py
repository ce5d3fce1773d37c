"""pyfunc wrapper of the token-routed LMs (family ``depth_routing``: ``mod_lm``, ``dtf_lm``).

Prompts are generated in batches: left-padded with an attention mask, greedy, with a KV cache
in which every routed block keeps only the tokens it computed, routed causally (each token
decides from its own stop-gradient predictor logit, so sampling never looks ahead; padding
tokens are never attended and stay out of DTF's moving average). A batch gives each prompt
the tokens it gets alone (tested)::

    lm = mlflow.pyfunc.load_model("models:/mod_lm/latest")
    lm.predict(["The json module", "A list"], params={"max_new_tokens": 20, "batch_size": 8})

Logged as model code like :mod:`router_pipelines.serving.causal_lm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow.models import ModelSignature, infer_signature, set_model

from router_pipelines.config import check_int
from router_pipelines.serving.causal_lm import PARAMS as CAUSAL_LM_PARAMS
from router_pipelines.serving.causal_lm import CausalLMModel
from router_pipelines.serving.generation import _start_token, check_max_new_tokens, prompts_from

PARAMS: dict[str, Any] = {**CAUSAL_LM_PARAMS, "batch_size": 8}


def signature() -> ModelSignature:
    """Prompts in, continuations out, params ``max_new_tokens`` and ``batch_size``."""
    return infer_signature(["a prompt"], ["a continuation"], params=PARAMS)


def batched_continuations(
    bundle: Any, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 8
) -> list[str]:
    """Greedy continuations of ``prompts``, ``batch_size`` at a time, in the given order.

    Like :func:`router_pipelines.serving.generation.greedy_continuations` (a prompt longer than
    the context keeps its last tokens; generation stops at the context length), but batched:
    prompts are left-padded to the batch's longest, and only prompts with the same room left
    in the context share a batch, so each gets exactly the tokens it would get alone.
    """
    import torch

    check_int("batch_size", batch_size, minimum=1)
    tokenizer, model = bundle.tokenizer, bundle.model
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    context = getattr(model.config, "max_position_embeddings", None)
    encoded = []
    for prompt in prompts:
        ids = tokenizer(prompt)["input_ids"] or _start_token(tokenizer)["input_ids"][0].tolist()
        if context:
            ids = ids[-(context - 1) :]
        room = min(max_new_tokens, context - len(ids)) if context else max_new_tokens
        encoded.append((list(ids), room))
    outputs = [""] * len(prompts)
    by_room: dict[int, list[int]] = {}
    for index, (_, room) in enumerate(encoded):
        if room > 0:
            by_room.setdefault(room, []).append(index)
    with torch.inference_mode():
        for room, indices in by_room.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                input_ids, attention_mask = _left_padded([encoded[i][0] for i in chunk], pad_id)
                generated = model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    max_new_tokens=room,
                    do_sample=False,
                    pad_token_id=pad_id,
                )  # (B, L + new)
                for row, index in enumerate(chunk):
                    new_tokens = generated[row, input_ids.shape[1] :]
                    outputs[index] = tokenizer.decode(new_tokens, skip_special_tokens=True)
    return outputs


def _left_padded(rows: list[list[int]], pad_id: int | None) -> tuple[Any, Any]:
    """(input_ids, attention_mask), each (B, L): ``rows`` right-aligned, padding on the left."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


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
        batch_size = params.get("batch_size", PARAMS["batch_size"])
        if isinstance(batch_size, str) and batch_size.strip().isdigit():
            batch_size = int(batch_size)  # a REST call's params arrive as strings
        return batched_continuations(
            self.bundle, prompts_from(model_input), max_new_tokens, batch_size
        )


set_model(DepthRoutingLMModel())
