"""Perplexity and next-token accuracy of a causal LM on a tokenized dataset."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

IGNORE_INDEX = -100  # HF convention for positions that do not count


def evaluate_language_model(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float | int]:
    """Token-weighted loss, perplexity and argmax accuracy of ``model`` on ``dataset``.

    Labels are shifted the HF way: the logits at position ``t`` predict ``labels[t + 1]``;
    positions whose label is -100 are skipped. The loss is the mean NLL over all counted tokens
    of all batches (not a mean of per-batch means), so padding and ragged batches do not bias it.

    Args:
        model: a causal LM whose ``forward(input_ids=, attention_mask=)`` returns ``.logits``
            ``(B, T, V)`` (a HF model or a ``SwitchableLM`` at its current precision).
        dataset: items ``{"input_ids", "labels", "attention_mask"}``, LongTensors ``(T,)``.
        batch_size: sequences per forward.
        max_batches: stop after this many batches (``None``: the whole dataset).
        device: where to run; ``None`` uses the device of the model's parameters. The model is
            moved there.

    Returns:
        ``loss`` (mean NLL in nats), ``perplexity`` (``exp(loss)``), ``token_accuracy`` and
        ``tokens`` (the number of counted positions).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size: must be a positive int, got {batch_size!r}")
    if max_batches is not None and (
        isinstance(max_batches, bool) or not isinstance(max_batches, int) or max_batches <= 0
    ):
        raise ValueError(f"max_batches: must be a positive int or None, got {max_batches!r}")
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)

    was_training = model.training
    model.eval()
    nll_sum = 0.0
    correct = 0
    tokens = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    try:
        with torch.inference_mode():
            for batch_index, batch in enumerate(loader):
                if max_batches is not None and batch_index >= max_batches:
                    break
                input_ids = batch["input_ids"].to(device)  # (B, T)
                labels = batch["labels"].to(device)  # (B, T)
                attention_mask = batch["attention_mask"].to(device)  # (B, T)
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
                logits = logits[:, :-1, :].float()  # (B, T-1, V): position t predicts t+1
                targets = labels[:, 1:]  # (B, T-1)
                counted = targets != IGNORE_INDEX
                nll_sum += F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)),
                    targets.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                ).item()
                correct += int(((logits.argmax(dim=-1) == targets) & counted).sum())
                tokens += int(counted.sum())
    finally:
        model.train(was_training)

    if tokens == 0:
        raise ValueError(
            "dataset: no label is different from -100 after shifting; nothing to score"
        )
    loss = nll_sum / tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,  # exp overflows past ~709
        "token_accuracy": correct / tokens,
        "tokens": tokens,
    }
