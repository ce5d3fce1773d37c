"""The router's SFT loss: cross-entropy on the label token only (seed 004)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from router_pipelines.constants import IGNORE_INDEX


def make_router_loss(label_ids: Sequence[int]) -> Any:
    """``loss_fn(model, batch, step)`` for the engine.

    The loss is the next-token cross-entropy (full vocabulary, as SFT) at the positions whose
    label is not ``IGNORE_INDEX``: the label token only. Metrics: ``label_accuracy`` (argmax
    over the five label tokens equals the label) and ``label_nll`` (cross-entropy of the
    softmax over the five label tokens, what inference reads).
    """
    label_index = torch.tensor(list(label_ids), dtype=torch.long)

    def router_loss(model: Any, batch: dict[str, torch.Tensor], step: int):
        del step
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        targets = batch["labels"][:, 1:]  # (B, T-1): the token each position predicts
        picked = targets != IGNORE_INDEX
        answer_logits = logits[:, :-1][picked].float()  # (M, V)
        answer_targets = targets[picked]  # (M,)
        loss = F.cross_entropy(answer_logits, answer_targets)
        index = label_index.to(logits.device)
        label_logits = answer_logits[:, index]  # (M, 5)
        target_class = (answer_targets[:, None] == index[None]).float().argmax(dim=1)
        metrics = {
            "label_accuracy": (label_logits.argmax(dim=1) == target_class).float().mean().detach(),
            "label_nll": F.cross_entropy(label_logits, target_class).detach(),
            "tokens": picked.sum(),
        }
        return loss, metrics

    return router_loss
