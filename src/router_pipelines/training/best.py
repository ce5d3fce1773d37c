"""The best step by ``metric_for_best_model``, and early stopping on the same metric.

The best value moves on any improvement in the metric's direction; early-stopping patience
counts evaluations whose improvement is not more than ``early_stopping_threshold``. A NaN or
infinite value never improves.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from accelerate import Accelerator
from torch import nn

from router_pipelines.training.checkpoint import save_best_model
from router_pipelines.training.config import EVAL_PREFIX, TrainingConfig
from router_pipelines.training.eval_loop import metric_prefix
from router_pipelines.training.state import TrainerState

logger = logging.getLogger(__name__)


class BestMetric:
    """Reads ``metric_for_best_model`` from eval metrics and updates the state's best step."""

    def __init__(self, config: TrainingConfig) -> None:
        self.name = config.best_metric_name
        self.greater_is_better = config.best_metric_greater_is_better
        self.threshold = config.early_stopping_threshold
        self.early_stopping = config.early_stopping
        self.patience = config.early_stopping_patience
        self.save_best_model = config.save_best_model
        self.trainable_only = config.save_only_trainable

    def check_producible(self, eval_sets: Sequence[str | None], has_eval_callbacks: bool) -> None:
        """Fail at construction when no evaluation could ever log the metric.

        An unnamed eval set may log any ``eval_<m>``; named sets only ``eval_<name>_...``;
        callbacks anything (checked at the first evaluation).

        Raises:
            ValueError: naming ``metric_for_best_model`` and the names that would be logged.
        """
        if has_eval_callbacks or None in eval_sets or not eval_sets:
            return
        prefixes = [metric_prefix(name) for name in eval_sets]
        if not any(self.name.startswith(prefix) for prefix in prefixes):
            losses = [f"{prefix}loss" for prefix in prefixes]
            raise ValueError(
                f"metric_for_best_model: {self.name!r} is never logged: the named eval sets "
                f"{list(eval_sets)} log {losses} and {[p + '<metric>' for p in prefixes]} for "
                "each metric of the eval loss function; set metric_for_best_model to one of them"
            )

    def value(self, metrics: Mapping[str, float]) -> float:
        """The metric's value in ``metrics``.

        Raises:
            ValueError: naming the metric and the ones the evaluation produced.
        """
        if self.name not in metrics:
            raise ValueError(
                f"metric_for_best_model: {self.name!r} is not among the evaluation's metrics "
                f"{sorted(metrics)}; set it to one of them ('{EVAL_PREFIX}' may be left off)"
            )
        return metrics[self.name]

    def update(self, state: TrainerState, metrics: Mapping[str, float]) -> bool:
        """Record this evaluation in ``state``; return whether it is a new best."""
        value, best = self.value(metrics), state.best_metric
        if not math.isfinite(value):
            improved = improved_enough = False
        elif best is None:
            improved = improved_enough = True
        else:
            gain = value - best if self.greater_is_better else best - value
            improved, improved_enough = gain > 0, gain > self.threshold
        if improved:
            state.best_metric, state.best_step = value, state.global_step
        state.patience_counter = 0 if improved_enough else state.patience_counter + 1
        if self.early_stopping and state.patience_counter >= self.patience:
            state.stopped_early = True
        return improved

    def record(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        run_dir: Path,
        state: TrainerState,
        metrics: Mapping[str, float],
    ) -> None:
        """:meth:`update`, then write a new best to ``<run_dir>/best``; a collective call."""
        was_stopped = state.stopped_early
        if self.update(state, metrics) and self.save_best_model:
            info = {"step": state.global_step, "metric_for_best_model": self.name, **metrics}
            save_best_model(accelerator, model, run_dir, info, self.trainable_only)
        if state.stopped_early and not was_stopped and accelerator.is_main_process:
            logger.info(
                "early stopping at step %d: no %s improvement > %g in %d evaluations",
                state.global_step,
                self.name,
                self.threshold,
                state.patience_counter,
            )
