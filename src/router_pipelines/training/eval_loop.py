"""Evaluation: batch-loss means over one or several named eval sets, plus dataset-level metrics.

Metric names follow the HF Trainer: one unnamed eval set gives ``eval_loss`` and
``eval_<m>``; named sets ``{"val": ..., "ood": ...}`` give ``eval_val_loss``,
``eval_val_<m>``, ``eval_ood_loss``, ... An eval callback's metrics get the ``eval_`` prefix
unless they already carry it.

Means are weighted by the ``"tokens"`` metric when the eval loss function returns one, else
every batch counts once; sums stay on the device and are reduced once per eval set. Under
several processes Accelerate pads the last eval batch with repeated examples
(``even_batches``), a negligible bias.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from numbers import Real
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from router_pipelines.training.config import EVAL_PREFIX, TrainingConfig
from router_pipelines.training.dataloaders import build_eval_dataloader, check_map_dataset
from router_pipelines.training.losses import LossFn
from router_pipelines.training.metrics import (
    RESERVED_METRICS,
    add_into,
    as_float,
    check_metrics,
    reduce_sums,
    sum_dtype,
)
from router_pipelines.training.runtime import module_modes, restore_module_modes

EVAL_SET_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
UNNAMED = "eval"  # how an unnamed eval_dataset is keyed in the loaders given to callbacks

EvalCallback = Callable[
    [nn.Module, Accelerator, Mapping[str, DataLoader], int], Mapping[str, float | torch.Tensor]
]
"""``callback(model, accelerator, loaders, step) -> metrics``: a dataset-level evaluation.

Called on every process (it may use collectives such as ``accelerator.gather``) after the
batch-loss evaluation, with the prepared model in eval mode under ``torch.no_grad`` and a
forked RNG; ``loaders`` maps each eval set's name (``"eval"`` for an unnamed one) to its
prepared loader. It returns metrics that are not means of batch losses (APGR, routing
entropy) as floats or 0-d tensors, already reduced over processes: the same keys and values
on every process. They are logged with the eval metrics and may be ``metric_for_best_model``.
"""


def metric_prefix(name: str | None) -> str:
    """``eval_`` for the unnamed eval set, ``eval_<name>_`` for a named one."""
    return EVAL_PREFIX if name is None else f"{EVAL_PREFIX}{name}_"


def run_evaluation(
    accelerator: Accelerator,
    model: nn.Module,
    loaders: Mapping[str | None, DataLoader],
    loss_fn: LossFn,
    callbacks: Sequence[EvalCallback],
    step: int,
) -> dict[str, float]:
    """Every eval set's means, then every eval callback's metrics; a collective call.

    Runs with ``model.eval()`` (each sub-module's mode restored after) and under
    ``torch.random.fork_rng``, so evaluating never moves the training RNG streams (exact
    resume depends on it).

    Raises:
        ValueError: a callback returned a bad value or a name another metric already has.
    """
    modes = module_modes(model)
    model.eval()
    metrics: dict[str, float] = {}
    devices = [] if accelerator.device.type == "cpu" else [accelerator.device]  # CPU: always
    rng = torch.random.fork_rng(devices=devices, device_type=accelerator.device.type)
    try:
        with rng, torch.no_grad():
            for name, loader in loaders.items():
                means = _evaluate_loader(accelerator, model, loader, loss_fn, step)
                prefix = metric_prefix(name)
                metrics.update({f"{prefix}{key}": value for key, value in means.items()})
            named = {UNNAMED if name is None else name: loader for name, loader in loaders.items()}
            for callback in callbacks:
                _merge_callback(metrics, callback, callback(model, accelerator, named, step))
    finally:
        restore_module_modes(modes)
    return metrics


def _evaluate_loader(
    accelerator: Accelerator, model: nn.Module, loader: DataLoader, loss_fn: LossFn, step: int
) -> dict[str, float]:
    """``{"loss": mean, "<m>": mean, ...}`` over ``loader`` and all processes."""
    dtype = sum_dtype(accelerator.device)
    sums: dict[str, torch.Tensor] = {
        "loss": torch.zeros((), dtype=dtype, device=accelerator.device)
    }
    weight = torch.zeros((), dtype=dtype, device=accelerator.device)
    for batch in loader:
        with accelerator.autocast():
            loss, batch_metrics = loss_fn(model, batch, step)
        if not (isinstance(loss, Real) or isinstance(loss, torch.Tensor) and loss.ndim == 0):
            raise ValueError(f"eval_loss_fn: must return a scalar loss, got {loss!r}")
        check_metrics("eval_loss_fn", batch_metrics)
        w = batch_metrics.get("tokens", 1.0)
        add_into(sums["loss"], loss, w)
        for key, value in batch_metrics.items():
            if key not in RESERVED_METRICS:  # a "loss" metric would count the loss twice
                if key not in sums:
                    sums[key] = torch.zeros((), dtype=dtype, device=accelerator.device)
                add_into(sums[key], value, w)
        add_into(weight, w)
    keys = sorted(sums)
    totals = reduce_sums(accelerator, [sums[k] for k in keys] + [weight])
    return {key: totals[i] / max(totals[-1], 1e-12) for i, key in enumerate(keys)}


def _merge_callback(metrics: dict[str, float], callback: EvalCallback, results: object) -> None:
    where = f"eval_callbacks: {getattr(callback, '__name__', type(callback).__name__)}"
    if not isinstance(results, Mapping):
        raise ValueError(f"{where}: must return a mapping of metric name -> value, got {results!r}")
    for key, value in results.items():
        name = key if str(key).startswith(EVAL_PREFIX) else f"{EVAL_PREFIX}{key}"
        if name in metrics:
            raise ValueError(f"{where}: metric {name!r} is already produced by the evaluation")
        metrics[name] = as_float(where, str(key), value)


def named_eval_sets(eval_dataset: Any) -> dict[str | None, Dataset]:
    """``{None: dataset}`` for one unnamed eval set, ``{name: dataset}`` for named ones."""
    if eval_dataset is None:
        return {}
    if not isinstance(eval_dataset, Mapping):
        check_map_dataset("eval_dataset", eval_dataset)
        return {None: eval_dataset}
    if not eval_dataset:
        raise ValueError("eval_dataset: an empty mapping; pass None for no evaluation")
    for name, dataset in eval_dataset.items():
        if not isinstance(name, str) or not EVAL_SET_NAME_RE.match(name):
            raise ValueError(
                f"eval_dataset: names must be letters, digits, '_', '-' or '.', got {name!r}"
            )
        check_map_dataset(f"eval_dataset[{name!r}]", dataset)
    return dict(eval_dataset)


def checked_eval_callbacks(callbacks: Sequence[EvalCallback] | None) -> list[EvalCallback]:
    callbacks = list(callbacks or [])
    for index, callback in enumerate(callbacks):
        if not callable(callback):
            raise ValueError(
                f"eval_callbacks: eval_callbacks[{index}] must be callable, got {callback!r}"
            )
    return callbacks


def build_eval_loaders(
    eval_sets: Mapping[str | None, Dataset], config: TrainingConfig, num_processes: int
) -> list[DataLoader]:
    """One sequential loader per eval set, each capped at ``eval_max_batches`` per process."""
    batch_size = config.eval_batch_size or config.batch_size
    loaders = []
    for dataset in eval_sets.values():
        if config.eval_max_batches is not None:
            limit = config.eval_max_batches * batch_size * num_processes
            dataset = Subset(dataset, range(min(limit, len(dataset))))
        loaders.append(build_eval_dataloader(dataset, batch_size, config.seed, config.num_workers))
    return loaders
