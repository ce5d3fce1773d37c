"""Logged training metrics (running sums), evaluation, and cross-process reduction."""

from __future__ import annotations

import time
from collections import defaultdict

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from router_pipelines.training.losses import LossFn

# Metric names a loss function may return that are not logged as metrics of their own.
RESERVED_METRICS = ("tokens", "loss")


def reduce_sums(accelerator: Accelerator, values: list[float]) -> list[float]:
    """Sum ``values`` element-wise over all processes (a collective call)."""
    # MPS has no float64; float32 sums are plenty for logged means.
    dtype = torch.float32 if accelerator.device.type == "mps" else torch.float64
    packed = torch.tensor(values, dtype=dtype, device=accelerator.device)
    return accelerator.reduce(packed, reduction="sum").tolist()


class LogWindow:
    """Per-process sums of what happened since the last training log.

    Losses are accumulated as device tensors so a micro-batch never forces a host
    sync; they are reduced over processes only when a log is written.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float32, device=self.device)
        self.micro_batches = 0
        self.metric_sums: dict[str, float] = defaultdict(float)
        self.metric_counts: dict[str, int] = defaultdict(int)
        self.grad_norm_sum = 0.0
        self.grad_norms = 0
        self.tokens = 0  # over all processes
        self.compute_seconds = 0.0
        self._step_started: float | None = None

    def start_step(self) -> None:
        self._step_started = time.perf_counter()

    def add_micro_batch(self, loss: torch.Tensor, metrics: dict[str, float]) -> None:
        self.loss_sum += loss.float()
        self.micro_batches += 1
        for key, value in metrics.items():
            # "tokens" is a weight for eval means; a "loss" metric is the returned loss itself
            if key not in RESERVED_METRICS:
                self.metric_sums[key] += float(value)
                self.metric_counts[key] += 1

    def end_step(self, tokens: int, grad_norm: float | None) -> None:
        self.tokens += tokens
        if grad_norm is not None:
            self.grad_norm_sum += grad_norm
            self.grad_norms += 1
        if self._step_started is not None:
            self.compute_seconds += time.perf_counter() - self._step_started

    def summary(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over micro-batches (and processes) since the last reset; a collective call.

        Keys: ``train_loss``, ``grad_norm`` (when clipping), ``tokens_per_s`` and
        ``train_<metric>`` for each family metric. Every process must have logged the
        same metric names.
        """
        keys = sorted(self.metric_sums)
        sums = reduce_sums(
            accelerator,
            [float(self.loss_sum), float(self.micro_batches)]
            + [self.metric_sums[k] for k in keys]
            + [float(self.metric_counts[k]) for k in keys],
        )
        record = {"train_loss": sums[0] / max(sums[1], 1.0)}
        if self.grad_norms:
            record["grad_norm"] = self.grad_norm_sum / self.grad_norms
        if self.compute_seconds > 0:
            record["tokens_per_s"] = self.tokens / self.compute_seconds
        for i, key in enumerate(keys):
            record[f"train_{key}"] = sums[2 + i] / max(sums[2 + len(keys) + i], 1.0)
        return record


@torch.no_grad()
def evaluate(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, loss_fn: LossFn, step: int
) -> dict[str, float]:
    """Mean eval loss and metrics over ``loader`` and all processes; a collective call.

    Each batch is weighted by its ``"tokens"`` metric when ``loss_fn`` returns one, else
    by 1. Runs with ``model.eval()`` (train mode restored after) and under
    ``torch.random.fork_rng``, so evaluating never moves the training RNG streams
    (exact resume depends on it).

    Returns:
        ``{"eval_loss": ..., "eval_<metric>": ...}``.
    """
    sums, weight = {"loss": 0.0}, 0.0
    was_training = model.training
    model.eval()
    devices = [] if accelerator.device.type == "cpu" else [accelerator.device]  # CPU: always
    with torch.random.fork_rng(devices=devices, device_type=accelerator.device.type):
        for batch in loader:
            with accelerator.autocast():
                loss, metrics = loss_fn(model, batch, step)
            w = float(metrics.get("tokens", 1.0))
            sums["loss"] += float(loss) * w
            for key, value in metrics.items():
                if key not in RESERVED_METRICS:  # a "loss" metric would count the loss twice
                    sums[key] = sums.get(key, 0.0) + float(value) * w
            weight += w
    model.train(was_training)
    keys = sorted(sums)
    totals = reduce_sums(accelerator, [sums[k] for k in keys] + [weight])
    return {f"eval_{k}": totals[i] / max(totals[-1], 1e-12) for i, k in enumerate(keys)}
