"""What a training run returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from accelerate import Accelerator
from torch import nn

from router_pipelines.training import checkpoint as ckpt
from router_pipelines.training.state import TrainerState
from router_pipelines.training.weights import load_best_weights


@dataclass
class TrainResult:
    """What :meth:`~router_pipelines.training.Trainer.train` returns."""

    global_step: int  # optimizer steps completed
    epochs_completed: float  # passes over the training set (fractional)
    tokens_seen: int  # input tokens over all processes
    train_loss: float  # last logged train_loss (nan if none)
    best_eval_loss: float | None  # eval_loss at the best step (None when not logged)
    best_step: int | None
    best_metric: float | None  # metric_for_best_model at the best step
    best_metric_name: str  # e.g. "eval_loss", "eval_val_apgr"
    stopped_early: bool  # stopped before max_steps: early stopping or a callback
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)]
    run_dir: str  # <output_dir>/<run_name>: this run's checkpoints and best/
    best_model_dir: str | None
    last_checkpoint: str | None
    seconds: float  # wall time of this train() call
    model: nn.Module = field(repr=False)  # unwrapped; best weights if load_best_model_at_end


def build_result(
    accelerator: Accelerator,
    model: nn.Module,
    state: TrainerState,
    run_dir: Path,
    *,
    best_metric_name: str,
    load_best: bool,
    batches_per_epoch: int,
    stopped_by_callback: bool,
    seconds: float,
) -> TrainResult:
    """The :class:`TrainResult` of a finished loop; with ``load_best`` the unwrapped model
    gets the ``best/`` weights first (a collective call: every process loads)."""
    best_dir = run_dir / ckpt.BEST_DIR_NAME
    has_best = state.best_step is not None and best_dir.is_dir()
    unwrapped = accelerator.unwrap_model(model)
    if load_best and has_best:
        accelerator.wait_for_everyone()
        info = ckpt.read_json(best_dir / ckpt.BEST_INFO_NAME)
        load_best_weights(unwrapped, best_dir, bool(info.get("trainable_only", False)))
    latest = ckpt.last_checkpoint(run_dir)
    losses = state.history.get("train_loss", [])
    eval_losses = dict(state.history.get("eval_loss", []))
    return TrainResult(
        global_step=state.global_step,
        epochs_completed=state.epoch + state.batch_in_epoch / batches_per_epoch,
        tokens_seen=state.tokens_seen,
        train_loss=losses[-1][1] if losses else float("nan"),
        best_eval_loss=eval_losses.get(state.best_step),
        best_step=state.best_step,
        best_metric=state.best_metric,
        best_metric_name=best_metric_name,
        stopped_early=state.stopped_early or stopped_by_callback,
        history={k: list(v) for k, v in state.history.items()},
        run_dir=str(run_dir),
        best_model_dir=str(best_dir) if has_best else None,
        last_checkpoint=str(latest) if latest is not None else None,
        seconds=seconds,
        model=unwrapped,
    )
