"""The router's SFT loss: cross-entropy on the label token only (seed 004)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from router_pipelines.constants import IGNORE_INDEX


def make_router_loss(label_ids: Sequence[int]) -> Any:
    """``loss_fn(model, batch, step)`` for the engine.

    ``batch["labels"]`` is ``IGNORE_INDEX`` everywhere but the label token (one per row, the
    SFT loss mask). The loss is the cross-entropy of the softmax over the five label tokens at
    the answer position (the token before the label): exactly what inference reads. Only the
    hidden state at that position goes through the LM head, and only its five label rows
    (:func:`~router_pipelines.models.query_router.label_logits`): the (B, T, V) logits of a
    full SFT step are never built, which made a step on the CPU several times slower.
    Metrics: ``label_accuracy`` (argmax over the five labels) and ``label_nll`` (= the loss).
    """
    from router_pipelines.models.query_router import hidden_at, label_logits

    label_list = [int(i) for i in label_ids]
    label_index = torch.tensor(label_list, dtype=torch.long)

    def router_loss(model: Any, batch: dict[str, torch.Tensor], step: int):
        del step
        labels = batch["labels"]
        picked = labels != IGNORE_INDEX  # (B, T)
        if not bool((picked.sum(dim=1) == 1).all()):
            raise ValueError("router batch: every row needs exactly one label token")
        label_position = picked.float().argmax(dim=1)  # (B,)
        hidden = hidden_at(
            model, batch["input_ids"], batch["attention_mask"], label_position - 1
        )  # (B, C) at the answer position
        logits = label_logits(model, hidden, label_list)  # (B, 5)
        target_token = labels[torch.arange(labels.shape[0], device=labels.device), label_position]
        index = label_index.to(labels.device)
        target_class = (target_token[:, None] == index[None]).float().argmax(dim=1)  # (B,)
        loss = F.cross_entropy(logits, target_class)
        metrics = {
            "label_accuracy": (logits.argmax(dim=1) == target_class).float().mean().detach(),
            "label_nll": loss.detach(),
            "tokens": picked.sum(),
        }
        return loss, metrics

    return router_loss
