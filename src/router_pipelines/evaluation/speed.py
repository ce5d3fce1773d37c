"""Inference throughput of a causal LM: one prefill forward, or token-by-token decoding.

Decoding is a hand-written loop over the model's forward with a KV cache rather than
``generate()``: ``generate`` adds logits processors, stopping criteria and cache set-up whose
cost varies between transformers versions and would blur the comparison between precisions.
"""

from __future__ import annotations

import statistics
import time
from typing import Literal

import torch
from torch import nn

from router_pipelines.config import check_int

MODES = ("prefill", "decode")


def measure_throughput(
    model: nn.Module,
    vocab_size: int,
    batch_size: int,
    seq_len: int,
    mode: Literal["prefill", "decode"],
    warmup: int = 2,
    iters: int = 5,
    device: torch.device | str | None = None,
    seed: int = 0,
) -> dict[str, float | int | str]:
    """Tokens per second of ``model`` on seeded random token ids.

    - ``prefill``: one forward over ``(batch_size, seq_len)`` tokens without a cache.
    - ``decode``: ``seq_len`` forwards of one new token each at batch ``batch_size``, reusing
      the KV cache (``use_cache=True``, ``past_key_values``); the first step starts from one
      random token and each next token is the argmax of the previous step (greedy decoding).

    Both count ``batch_size * seq_len`` tokens per iteration. ``warmup`` untimed iterations run
    first; ``seconds`` is the median wall time of ``iters`` timed iterations (the median is less
    sensitive to other processes on a shared machine than the mean).

    Args:
        model: a causal LM (HF or ``SwitchableLM``) at the precision to measure.
        vocab_size: token ids are drawn from ``[0, vocab_size)``.
        batch_size: sequences per forward.
        seq_len: prompt length (prefill) or new tokens (decode).
        mode: ``"prefill"`` or ``"decode"``.
        warmup: untimed iterations.
        iters: timed iterations.
        device: where to run; ``None`` uses the device of the model's parameters (or buffers).
            The model is moved there.
        seed: seed for the random token ids.

    Returns:
        ``tokens_per_s``, ``seconds`` (per iteration), ``mode``, ``batch_size``, ``seq_len``.
    """
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not allowed; choose one of {list(MODES)}")
    for key, value, minimum in (
        ("vocab_size", vocab_size, 1),
        ("batch_size", batch_size, 1),
        ("seq_len", seq_len, 1),
        ("warmup", warmup, 0),
        ("iters", iters, 1),
    ):
        check_int(key, value, minimum=minimum)
    max_positions = model_max_positions(model)
    if max_positions is not None and seq_len > max_positions:
        raise ValueError(f"seq_len: {seq_len} exceeds the model's {max_positions} positions")

    device = torch.device(device) if device is not None else _model_device(model)
    model.to(device)
    generator = torch.Generator().manual_seed(seed)
    shape = (batch_size, seq_len if mode == "prefill" else 1)
    input_ids = torch.randint(0, vocab_size, shape, generator=generator).to(device)
    step = _prefill if mode == "prefill" else _decode

    was_training = model.training
    model.eval()
    timings = []
    try:
        with torch.inference_mode():
            for iteration in range(warmup + iters):
                _synchronize(device)
                start = time.perf_counter()
                step(model, input_ids, seq_len)
                _synchronize(device)
                if iteration >= warmup:
                    timings.append(time.perf_counter() - start)
    finally:
        model.train(was_training)
    seconds = statistics.median(timings)
    return {
        "tokens_per_s": batch_size * seq_len / seconds,
        "seconds": seconds,
        "mode": mode,
        "batch_size": batch_size,
        "seq_len": seq_len,
    }


def _prefill(model: nn.Module, input_ids: torch.Tensor, seq_len: int) -> None:
    model(input_ids=input_ids, use_cache=False)  # input_ids (B, T)


def _decode(model: nn.Module, input_ids: torch.Tensor, seq_len: int) -> None:
    next_ids = input_ids  # (B, 1)
    past_key_values = None
    for _ in range(seq_len):
        output = model(input_ids=next_ids, past_key_values=past_key_values, use_cache=True)
        past_key_values = output.past_key_values
        next_ids = output.logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (B, 1)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():  # a fully packed model may hold only buffers
        return tensor.device
    return torch.device("cpu")


def model_max_positions(model: nn.Module) -> int | None:
    """The model's context length from its config (``max_position_embeddings`` or GPT-2's
    ``n_positions``), or ``None`` when it has none."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
