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


def check_count_param(name: str, value: Any) -> int:
    """A pyfunc param such as ``max_new_tokens`` or ``batch_size`` as an int >= 1 (MLflow hands
    params over already typed; strings from a REST call are accepted when they hold an
    integer)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    check_int(name, value, minimum=1)
    return value


def check_max_new_tokens(value: Any) -> int:
    """``max_new_tokens`` as an int >= 1 (see :func:`check_count_param`)."""
    return check_count_param("max_new_tokens", value)


def greedy_continuations(
    bundle: ModelBundle, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 1
) -> list[str]:
    """Continue each prompt greedily by at most ``max_new_tokens`` tokens, in the given order.

    A prompt longer than the model's context keeps its last tokens, and the continuation stops
    at the context length (position embeddings end there). Only the new text is returned.
    With ``batch_size`` > 1 prompts are generated ``batch_size`` at a time, left-padded to the
    batch's longest with an attention mask; only prompts with the same room left in the
    context share a batch, so each gets the tokens it would get alone (a model must mask
    padding correctly for that: the token-routed LMs do, tested).
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
                input_ids, attention_mask = left_padded([encoded[i][0] for i in chunk], pad_id)
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


def left_padded(rows: list[list[int]], pad_id: int | None) -> tuple[Any, Any]:
    """(input_ids, attention_mask), each (B, L): ``rows`` right-aligned, padding on the left.
    By hand rather than ``tokenizer.pad``: the rows are already truncated token ids, and a
    tokenizer without a pad token (GPT-2's) would need one set first."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id if pad_id is not None else 0)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        attention_mask[i, width - len(row) :] = 1
    return input_ids, attention_mask


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
