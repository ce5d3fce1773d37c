"""Learning-rate range test (Smith 2015; the fastai ``lr_find`` procedure).

The base lr sweeps exponentially from ``start_lr`` to ``end_lr`` over ``num_steps``
optimizer steps on the training data, with the engine's optimizer, parameter
groups (each group keeps its ratio to ``learning_rate``), gradient accumulation,
clipping and precision. The recorded loss is an exponential moving average
(``smoothing``, bias-corrected). The sweep stops early when the smoothed loss
exceeds ``divergence_factor`` times its minimum so far (losses assumed positive) or
a loss is not finite.

Suggestion: the lr where the smoothed loss falls fastest, i.e. the minimum of
``d(smoothed loss) / d(log10 lr)`` (fastai's "steep" rule), which sits below the
divergence point with a margin. The model's original weights, train/eval mode and
the global RNG states are restored afterwards; optimizer state is discarded. The model
stays on the accelerator device, and gradient checkpointing (when configured) stays on,
as the Trainer would set both anyway. Run it before building the Trainer.

Accelerate has no range test and the HF/Lightning ones are tied to their trainers,
hence this small hand-written loop.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import DataLoader, Dataset

from router_pipelines.training.config import TrainingConfig
from router_pipelines.training.dataloaders import EpochSeededSampler, build_train_dataloader
from router_pipelines.training.losses import LossFn
from router_pipelines.training.metrics import reduce_sums
from router_pipelines.training.optim import build_optimizer
from router_pipelines.training.runtime import (
    build_accelerator,
    claim_gradient_state,
    enable_gradient_checkpointing,
)


@dataclass
class LRFinderResult:
    """The sweep: ``lrs[i]`` (base lr of step i) against ``losses[i]`` (smoothed)."""

    lrs: list[float]
    losses: list[float]  # bias-corrected exponential moving average of the step losses
    suggestion: float | None  # steepest descent of the smoothed curve; None below 3 points
    raw_losses: list[float] = field(default_factory=list)  # the step losses themselves


def find_lr(
    model: nn.Module,
    loss_fn: LossFn,
    train_dataset: Dataset,
    config: TrainingConfig,
    start_lr: float = 1e-7,
    end_lr: float = 1.0,
    num_steps: int = 100,
    smoothing: float = 0.98,
    divergence_factor: float = 4.0,
) -> LRFinderResult:
    """Sweep the learning rate and suggest one; ``model`` comes back unchanged.

    Args:
        model: the model to probe (weights restored afterwards).
        loss_fn: the family's ``loss_fn(model, batch, step)``.
        train_dataset: map-style dataset of dicts of 1-D LongTensors (length T).
        config: batch size, accumulation, param groups, precision, seed.
        start_lr: first base lr (> 0).
        end_lr: last base lr (> start_lr).
        num_steps: optimizer steps in the sweep (>= 2).
        smoothing: EMA factor in [0, 1) for the loss curve.
        divergence_factor: stop when the smoothed loss exceeds this times its minimum.

    Raises:
        ValueError: for a bad range, step count or smoothing.
    """
    if not 0 < start_lr < end_lr:
        raise ValueError(f"start_lr/end_lr: need 0 < start_lr < end_lr, got {start_lr}, {end_lr}")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps: expected an integer >= 2, got {num_steps!r}")
    if not 0 <= smoothing < 1:
        raise ValueError(f"smoothing: must be in [0, 1), got {smoothing!r}")
    if divergence_factor <= 1:
        raise ValueError(f"divergence_factor: must be > 1, got {divergence_factor!r}")
    original = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    was_training = model.training
    accelerator = build_accelerator(config)
    if config.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    loader, sampler = build_train_dataloader(
        train_dataset, config.batch_size, config.seed, config.num_workers
    )
    optimizer = build_optimizer(model, config)
    ratios = [group["lr"] / config.learning_rate for group in optimizer.param_groups]
    prepared, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    lrs: list[float] = []
    losses: list[float] = []
    raw_losses: list[float] = []
    try:
        devices = [] if accelerator.device.type == "cpu" else [accelerator.device]
        with torch.random.fork_rng(devices=devices, device_type=accelerator.device.type):
            claim_gradient_state(accelerator, config)
            set_seed(config.seed)
            prepared.train()
            batches = _endless(loader, sampler)
            average, best = 0.0, math.inf
            for step in range(num_steps):
                lr = start_lr * (end_lr / start_lr) ** (step / (num_steps - 1))
                for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                    group["lr"] = lr * ratio
                loss = _sweep_step(accelerator, prepared, optimizer, loss_fn, batches, step, config)
                if not math.isfinite(loss):
                    break
                average = smoothing * average + (1 - smoothing) * loss
                smoothed = average / (1 - smoothing ** (step + 1))
                lrs.append(lr)
                losses.append(smoothed)
                raw_losses.append(loss)
                best = min(best, smoothed)
                if smoothed > divergence_factor * best:
                    break
    finally:
        unwrapped = accelerator.unwrap_model(prepared)
        unwrapped.load_state_dict(original)
        unwrapped.zero_grad(set_to_none=True)
        unwrapped.train(was_training)
        accelerator.free_memory()
    return LRFinderResult(lrs, losses, _steepest_descent(lrs, losses), raw_losses)


def plot_lr_finder(result: LRFinderResult) -> Figure:
    """Smoothed loss against lr (log scale) with the suggestion marked; an Agg figure."""
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)  # render off-screen; pyplot and its global backend stay untouched
    ax = figure.add_subplot()
    ax.plot(result.lrs, result.losses, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    if result.suggestion is not None:
        ax.axvline(
            result.suggestion,
            linestyle="--",
            color="tab:red",
            label=f"suggestion {result.suggestion:.2e}",
        )
    ax.legend()
    figure.tight_layout()
    return figure


def _sweep_step(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    batches: Iterator[dict[str, torch.Tensor]],
    step: int,
    config: TrainingConfig,
) -> float:
    """One optimizer step over the accumulated micro-batches; the mean loss (all processes)."""
    total = 0.0
    for _ in range(config.gradient_accumulation_steps):
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, _ = loss_fn(model, next(batches), step)
            total += float(loss.detach())
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                if config.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    loss_sum, count = reduce_sums(accelerator, [total, float(config.gradient_accumulation_steps)])
    return loss_sum / count


def _endless(loader: DataLoader, sampler: EpochSeededSampler) -> Iterator[dict[str, torch.Tensor]]:
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _steepest_descent(lrs: list[float], losses: list[float]) -> float | None:
    if len(lrs) < 3:
        return None
    slopes = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))
    return float(lrs[int(np.argmin(slopes))])
