"""The loss-function contract between a model family and the engine, and loss helpers."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from router_pipelines.constants import IGNORE_INDEX

__all__ = ["IGNORE_INDEX", "LossFn", "causal_lm_loss", "combine_losses"]

LossFn = Callable[
    [nn.Module, dict[str, torch.Tensor], int],
    tuple[torch.Tensor, Mapping[str, float | torch.Tensor]],
]
"""``loss_fn(model, batch, step) -> (loss, metrics)``.

``batch`` holds LongTensors ``input_ids``, ``labels``, ``attention_mask`` of shape (B, T),
already on the device; ``step`` is the 0-based index of the optimizer step being
computed; ``loss`` is a scalar tensor; ``metrics`` maps names to python floats or 0-d
tensors. Return tensors (detached or not: the engine detaches them) rather than calling
``float()`` or ``.item()``: the engine sums them on the device and syncs once per log.
The metric ``"tokens"`` is reserved: a count used to token-weight the eval mean (it is not
logged as a metric).
"""


def causal_lm_loss(
    model: nn.Module, batch: dict[str, torch.Tensor], step: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The HF causal-LM loss ``model(**batch).loss`` (mean next-token cross-entropy).

    Args:
        model: an HF causal LM (shifts ``labels`` internally).
        batch: ``input_ids``, ``labels`` and ``attention_mask`` of shape (B, T).
        step: unused; part of the :data:`LossFn` contract.

    Returns:
        The scalar loss and ``{"tokens": n}``, the number of predicted tokens
        (``labels[:, 1:] != -100``) as a 0-d tensor, so evaluation averages over tokens.
    """
    del step
    loss = model(**batch).loss
    tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    return loss, {"tokens": tokens}


def combine_losses(
    terms: Mapping[str, torch.Tensor], weights: Mapping[str, float]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum weighted loss terms; return the total and each unweighted term as metrics.

    ``total = sum(weights[name] * terms[name])`` over the terms with a non-zero weight (a
    term without a weight counts once). A zero-weight term is still reported but not added,
    so an unused auxiliary loss (and its graph) never reaches the backward pass.

    Args:
        terms: name -> scalar loss tensor, e.g. ``{"lm": ..., "distill": ..., "balance": ...}``.
        weights: name -> weight; every name must be a term.

    Returns:
        ``(total, metrics)`` with ``metrics = {name: term (detached), ..., "total": total}``.

    Raises:
        ValueError: for a weight naming no term, no term at all, a term named "total",
            "tokens" or "loss", a non-scalar term, a negative or non-finite weight, or only
            zero weights.
    """
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise ValueError(f"weights: {unknown} name no loss term; the terms are {sorted(terms)}")
    if not terms:
        raise ValueError("terms: no loss term given")
    reserved = sorted({"total", "tokens", "loss"} & set(terms))
    if reserved:  # "total" is the sum's metric; the engine reads "tokens" and "loss" itself
        raise ValueError(f"terms: {reserved} are reserved metric names; rename the term(s)")
    total: torch.Tensor | None = None
    metrics: dict[str, torch.Tensor] = {}
    for name, term in terms.items():
        if not isinstance(term, torch.Tensor) or term.ndim != 0:
            raise ValueError(f"terms: {name!r} must be a scalar tensor, got {term!r}")
        weight = weights.get(name, 1.0)
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not (0 <= weight < float("inf"))
        ):
            raise ValueError(f"weights: {name!r} must be a finite number >= 0, got {weight!r}")
        metrics[name] = term.detach()
        if weight:
            weighted = term * weight if weight != 1 else term
            total = weighted if total is None else total + weighted
    if total is None:
        raise ValueError(f"weights: every term has weight 0 ({dict(weights)}); nothing to train")
    metrics["total"] = total.detach()
    return total, metrics
