"""Logged training metrics (running sums on the device) and cross-process reduction.

A loss function's metrics may be python numbers or 0-d tensors. Both are added into
per-process running sums that live on the device, so a micro-batch never forces a host
sync; the sums are reduced over processes and copied to the host once per log.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from numbers import Real

import torch
from accelerate import Accelerator

# Metric names a loss function may return that are not logged as metrics of their own:
# "tokens" weights eval means; a "loss" metric is the returned loss itself.
RESERVED_METRICS = ("tokens", "loss")

MetricValue = float | torch.Tensor


def sum_dtype(device: torch.device) -> torch.dtype:
    """float64 for running sums (exact token counts), float32 on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64


def check_metrics(where: str, metrics: object) -> Mapping[str, MetricValue]:
    """Return ``metrics`` or raise ``ValueError`` naming ``where`` and the bad entry.

    Checks only types and shapes (tensor metadata), so it never syncs with the device.
    """
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{where}: metrics must be a mapping of name -> number, got {metrics!r}")
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor):
            if value.ndim != 0:
                raise ValueError(
                    f"{where}: metric {key!r} must be a float or a 0-d tensor, got a tensor of "
                    f"shape {tuple(value.shape)}"
                )
        elif isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(
                f"{where}: metric {key!r} must be a float or a 0-d tensor, got {value!r}"
            )
    return metrics


def add_into(total: torch.Tensor, value: MetricValue, weight: MetricValue = 1.0) -> None:
    """``total += value * weight`` on the device, without a host sync."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to(total.device, total.dtype, non_blocking=True)
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().to(total.device, total.dtype, non_blocking=True)
    total.add_(value * weight)


def reduce_sums(accelerator: Accelerator, values: Sequence[MetricValue]) -> list[float]:
    """Sum ``values`` element-wise over all processes (a collective call); one host copy."""
    dtype = sum_dtype(accelerator.device)
    packed = torch.stack(
        [
            v.detach().to(accelerator.device, dtype).reshape(())
            if isinstance(v, torch.Tensor)
            else torch.tensor(float(v), dtype=dtype, device=accelerator.device)
            for v in values
        ]
    )
    return accelerator.reduce(packed, reduction="sum").tolist()


class LogWindow:
    """Per-process sums of what happened since the last training log."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.dtype = sum_dtype(device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum = self._zero()
        self.micro_batches = 0
        self.metric_sums: dict[str, torch.Tensor] = {}
        self.metric_counts: dict[str, int] = {}
        self.grad_norm_sum = self._zero()
        self.grad_norms = 0
        self.tokens = 0  # over all processes
        self.compute_seconds = 0.0
        self._step_started: float | None = None

    def _zero(self) -> torch.Tensor:
        return torch.zeros((), dtype=self.dtype, device=self.device)

    def start_step(self) -> None:
        self._step_started = time.perf_counter()

    def add_micro_batch(self, loss: torch.Tensor, metrics: Mapping[str, MetricValue]) -> None:
        add_into(self.loss_sum, loss)
        self.micro_batches += 1
        for key, value in metrics.items():
            if key in RESERVED_METRICS:
                continue
            if key not in self.metric_sums:
                self.metric_sums[key], self.metric_counts[key] = self._zero(), 0
            add_into(self.metric_sums[key], value)
            self.metric_counts[key] += 1

    def end_step(self, tokens: int, grad_norm: torch.Tensor | float | None) -> None:
        self.tokens += tokens
        if grad_norm is not None:
            add_into(self.grad_norm_sum, grad_norm)
            self.grad_norms += 1
        if self._step_started is not None:
            self.compute_seconds += time.perf_counter() - self._step_started

    @property
    def pending(self) -> bool:
        """Whether micro-batches were added since the last reset."""
        return self.micro_batches > 0

    def summary(self, accelerator: Accelerator) -> dict[str, float]:
        """Means over micro-batches (and processes) since the last reset; a collective call.

        Keys: ``train_loss``, ``grad_norm`` (mean over the steps, when clipping),
        ``tokens_per_s`` and ``train_<metric>`` for each family metric. Every process must
        have logged the same metric names.
        """
        keys = sorted(self.metric_sums)
        sums = reduce_sums(
            accelerator,
            [self.loss_sum, float(self.micro_batches), self.grad_norm_sum]
            + [self.metric_sums[k] for k in keys]
            + [float(self.metric_counts[k]) for k in keys],
        )
        record = {"train_loss": sums[0] / max(sums[1], 1.0)}
        if self.grad_norms:  # the same norm on every process: the sum counts it N times
            record["grad_norm"] = sums[2] / (self.grad_norms * accelerator.num_processes)
        if self.compute_seconds > 0:
            record["tokens_per_s"] = self.tokens / self.compute_seconds
        for i, key in enumerate(keys):
            record[f"train_{key}"] = sums[3 + i] / max(sums[3 + len(keys) + i], 1.0)
        return record


def as_float(where: str, key: str, value: object) -> float:
    """A callback's metric as a python float (0-d tensors copied to the host)."""
    if isinstance(value, torch.Tensor) and value.ndim == 0:
        return float(value)
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(value)
    raise ValueError(f"{where}: metric {key!r} must be a float or a 0-d tensor, got {value!r}")
