"""AdamW with named parameter groups, and the warmup + decay schedule.

Grouping rules:

* each trainable parameter goes to the first ``config.param_groups`` entry whose
  ``pattern`` (``re.search`` on the parameter name) matches; its lr is the entry's
  ``lr``, or ``learning_rate * lr_multiplier``; unmatched parameters use ``learning_rate``;
* weight decay is applied only to parameters with 2 or more dimensions: biases and
  norm weights (1-D) are not decayed (the nanoGPT / HF convention).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import get_scheduler

from router_pipelines.training.config import TrainingConfig

# transformers' scheduler names for our three choices; "constant" keeps the warmup.
_SCHEDULER_NAMES = {
    "cosine": "cosine",
    "linear": "linear",
    "constant": "constant_with_warmup",
}


def build_param_groups(model: nn.Module, config: TrainingConfig) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into AdamW parameter groups.

    Returns:
        A list of dicts with ``params``, ``lr``, ``weight_decay`` and ``group_name``
        (``"default"`` or the pattern, suffixed ``"/no_decay"`` for 0-/1-D params).
        Empty groups are left out.

    Raises:
        ValueError: when the model has no trainable parameter, or a
            ``param_groups`` pattern matches none (a typo would otherwise pass silently).
    """
    patterns = [re.compile(group["pattern"]) for group in config.param_groups]
    buckets: dict[tuple[int, bool], list[nn.Parameter]] = {}
    matched = [False] * len(patterns)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model: has no trainable parameter (all requires_grad=False)")
    for name, param in named:
        index = next((i for i, pat in enumerate(patterns) if pat.search(name)), -1)
        if index >= 0:
            matched[index] = True
        buckets.setdefault((index, param.ndim >= 2), []).append(param)
    for i, hit in enumerate(matched):
        if not hit:
            raise ValueError(
                f"param_groups: param_groups[{i}].pattern {config.param_groups[i]['pattern']!r} "
                "matches no trainable parameter name"
            )
    groups = []
    for (index, decay), params in sorted(buckets.items()):
        spec = config.param_groups[index] if index >= 0 else {}
        lr = spec.get("lr", config.learning_rate * spec.get("lr_multiplier", 1.0))
        base_name = spec.get("pattern", "default")
        groups.append(
            {
                "params": params,
                "lr": float(lr),
                "weight_decay": float(spec.get("weight_decay", config.weight_decay))
                if decay
                else 0.0,
                "group_name": base_name if decay else f"{base_name}/no_decay",
            }
        )
    return groups


def build_optimizer(model: nn.Module, config: TrainingConfig) -> torch.optim.AdamW:
    """AdamW over :func:`build_param_groups` with the config's betas and eps."""
    return torch.optim.AdamW(
        build_param_groups(model, config),
        lr=config.learning_rate,
        betas=config.adam_betas,
        eps=config.adam_eps,
    )


def build_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainingConfig
) -> torch.optim.lr_scheduler.LRScheduler:
    """Warmup + cosine/linear/constant schedule over ``config.max_steps`` optimizer steps.

    Uses ``transformers.get_scheduler``: with warmup ``w`` the lr factor at step ``s``
    (0-based) is ``s / w`` for ``s < w``, then cosine ``0.5 * (1 + cos(pi * p))``, linear
    ``1 - p`` or constant ``1``, with ``p = (s - w) / (max_steps - w)``.
    """
    return get_scheduler(
        _SCHEDULER_NAMES[config.scheduler],
        optimizer,
        num_warmup_steps=config.num_warmup_steps,
        num_training_steps=config.max_steps,
    )


def apply_lr(
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    multiplier_fn: Callable[[int], float] | None,
    step: int,
) -> list[float]:
    """Set every group's lr to its scheduled value times ``multiplier_fn(step)``; return them.

    Call right before ``optimizer.step()``: ``scheduler.step()`` afterwards overwrites the
    groups' lr with the next step's value, so the returned list is what the step used.

    Raises:
        ValueError: ``multiplier_fn`` returned a negative or non-finite number.
    """
    multiplier = 1.0 if multiplier_fn is None else float(multiplier_fn(step))
    if not math.isfinite(multiplier) or multiplier < 0:
        raise ValueError(f"lr_multiplier_fn: returned {multiplier!r} at step {step}; need >= 0")
    for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = float(lr) * multiplier
    return [group["lr"] for group in optimizer.param_groups]
