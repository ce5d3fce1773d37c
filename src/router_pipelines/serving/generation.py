"""Greedy text continuation shared by every pyfunc wrapper (no MLflow, no Kedro here)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from router_pipelines.config import check_int
from router_pipelines.models.bundle import ModelBundle

DEFAULT_MAX_NEW_TOKENS = 32


def prompts_from(model_input: Any) -> list[str]:
    """The prompts in a pyfunc input: a list of strings, or a DataFrame (pyfunc turns a list
    into a one-column DataFrame) whose ``prompt`` column, else first column, holds them."""
    if hasattr(model_input, "columns"):
        columns = list(model_input.columns)
        if not columns:
            raise ValueError("model_input: expected a list of prompts, got an empty DataFrame")
        column = "prompt" if "prompt" in columns else columns[0]
        return [str(p) for p in model_input[column]]
    if isinstance(model_input, str):
        return [model_input]
    return [str(p) for p in model_input]


def check_max_new_tokens(value: Any) -> int:
    """``max_new_tokens`` as an int >= 1 (MLflow hands params over already typed; strings from a
    REST call are accepted when they hold an integer)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    check_int("max_new_tokens", value, minimum=1)
    return value


def greedy_continuations(
    bundle: ModelBundle, prompts: Sequence[str], max_new_tokens: int
) -> list[str]:
    """Continue each prompt greedily by at most ``max_new_tokens`` tokens.

    A prompt longer than the model's context keeps its last tokens, and the continuation stops
    at the context length (position embeddings end there). Only the new text is returned.
    """
    import torch

    tokenizer, model = bundle.tokenizer, bundle.model
    context_length = getattr(model.config, "max_position_embeddings", None)
    outputs = []
    with torch.inference_mode():
        for prompt in prompts:
            ids = dict(tokenizer(prompt, return_tensors="pt"))  # input_ids: (1, T)
            if ids["input_ids"].shape[1] == 0:
                ids = _start_token(tokenizer)
            room = max_new_tokens
            if context_length:
                ids = {k: v[:, -(context_length - 1) :] for k, v in ids.items()}
                room = min(room, context_length - ids["input_ids"].shape[1])
            if room <= 0:
                outputs.append("")
                continue
            generated = model.generate(
                **ids,
                max_new_tokens=room,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id
                if tokenizer.pad_token_id is not None
                else tokenizer.eos_token_id,
            )  # (1, T + new)
            new_tokens = generated[0, ids["input_ids"].shape[1] :]
            outputs.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
    return outputs


def _start_token(tokenizer: Any) -> dict[str, Any]:
    """One start token for an empty prompt: BOS, else EOS (GPT-2's document separator)."""
    import torch

    token_id = tokenizer.bos_token_id
    if token_id is None:
        token_id = tokenizer.eos_token_id
    if token_id is None:
        raise ValueError(
            "model_input: an empty prompt needs a BOS or EOS token, and the tokenizer has neither"
        )
    ids = torch.tensor([[token_id]])
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
