"""The router's training loss: ``weight_ce * CE + weight_precision * precision_loss``.

``mean_bits`` is the parameter-weighted mean width of the chosen configuration (its forward
value is the realised mean, its gradient the softmax's, see
``LayerwiseQuantizeForCausalLM.train_forward``). The precision loss is normalised so that it
is of the order of a cross-entropy of a few nats:

- fixed weight (``target_bits`` null): ``precision_scale * (mean_bits - b_min) / (b_max - b_min)``,
  0 at the lowest width and ``precision_scale`` (5 nats by default) at the highest;
- target (``target_bits`` set): ``target_weight * (mean_bits - target_bits)^2`` (bits²).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from router_pipelines.config import check_positive
from router_pipelines.constants import IGNORE_INDEX


@dataclass
class RouterLossConfig:
    weight_ce: float = 0.7
    weight_precision: float = 0.3
    target_bits: float | None = None  # null: fixed weight; else the target mean width
    target_weight: float = 1.0  # α of α·(mean_bits - target)²
    precision_scale: float = 5.0  # nats of the fixed-weight penalty at the highest width

    def __post_init__(self) -> None:
        for key in ("weight_ce", "weight_precision", "target_weight"):
            check_positive(key, getattr(self, key), allow_zero=True)
        if self.weight_ce == 0 and self.weight_precision == 0:
            raise ValueError(
                "weight_ce, weight_precision: both are 0; at least one must be positive"
            )
        check_positive("precision_scale", self.precision_scale)
        if self.target_bits is not None:
            check_positive("target_bits", self.target_bits)


def precision_loss(mean_bits: torch.Tensor, widths: Sequence[int], config: RouterLossConfig):
    """The normalised precision penalty of a mean width (see the module docstring)."""
    low, high = min(widths), max(widths)
    if config.target_bits is None:
        return config.precision_scale * (mean_bits - low) / (high - low)
    return config.target_weight * (mean_bits - config.target_bits) ** 2


def shifted_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts label t+1."""
    return F.cross_entropy(
        logits[:, :-1].float().reshape(-1, logits.size(-1)),
        labels[:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
    )


def make_router_loss(config: RouterLossConfig, hard: bool = False) -> Callable[..., Any]:
    """``loss_fn(model, batch, step) -> (loss, metrics)`` for the engine.

    ``hard``: the inference choice (the eval loss, which picks the best router); else the
    differentiable one. Metrics: ``ce``, ``precision_loss``, ``avg_precision`` (realised mean
    bits), ``layer_<i>_bits`` and ``tokens``.
    """

    def loss_fn(model: Any, batch: dict[str, torch.Tensor], step: int) -> tuple[Any, dict]:
        del step
        router = getattr(model, "module", model)  # DDP-wrapped or not
        args = (batch["input_ids"], batch["attention_mask"])
        out = router.infer_forward(*args) if hard else router.train_forward(*args)
        ce = shifted_ce(out["logits"], batch["labels"])
        penalty = precision_loss(out["mean_bits"], router.precisions, config)
        total = config.weight_ce * ce + config.weight_precision * penalty
        metrics = {
            "ce": ce.detach(),
            "precision_loss": penalty.detach(),
            "avg_precision": out["mean_bits"].detach(),
            "tokens": (batch["labels"][:, 1:] != IGNORE_INDEX).sum(),
        }
        for index, bits in enumerate(out["chosen_bits"]):
            metrics[f"layer_{index}_bits"] = bits.detach()
        return total, metrics

    return loss_fn
