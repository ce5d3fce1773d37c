"""The loss-function contract between a model family and the engine."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

LossFn = Callable[[nn.Module, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict[str, float]]]
"""``loss_fn(model, batch, step) -> (loss, metrics)``.

``batch`` holds LongTensors ``input_ids``, ``labels``, ``attention_mask`` of shape (B, T),
already on the device; ``step`` is the 0-based index of the optimizer step being
computed; ``loss`` is a scalar tensor; ``metrics`` maps names to python floats. The
metric ``"tokens"`` is reserved: a count used to token-weight the eval mean (it is not
logged as a metric).
"""

IGNORE_INDEX = -100


def causal_lm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], step: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """The HF causal-LM loss ``model(**batch).loss`` (mean next-token cross-entropy).

    Args:
        model: an HF causal LM (shifts ``labels`` internally).
        batch: ``input_ids``, ``labels`` and ``attention_mask`` of shape (B, T).
        step: unused; part of the :data:`LossFn` contract.

    Returns:
        The scalar loss and ``{"tokens": n}``, the number of predicted tokens
        (``labels[:, 1:] != -100``), so evaluation averages over tokens.
    """
    del step
    loss = model(**batch).loss
    tokens = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    return loss, {"tokens": tokens}
