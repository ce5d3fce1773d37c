"""Learning-rate range test (Smith 2015; the fastai ``lr_find`` procedure), run on the engine.

The base lr sweeps exponentially from ``start_lr`` to ``end_lr`` over ``num_steps``
optimizer steps on the training data. It is a short :class:`~.engine.Trainer` run: a constant
schedule without warmup, the sweep through ``lr_multiplier_fn`` (so each parameter group
keeps its ratio to ``learning_rate``), a train log every step, no evaluation, checkpoints or
files, and a callback that records each step's loss (the mean over micro-batches and
processes) as a bias-corrected exponential moving average (``smoothing``) and stops when it
exceeds ``divergence_factor`` times its minimum so far (losses assumed positive). A non-finite
loss ends the sweep too (the engine refuses the update; the step is not recorded). The
optimizer, accumulation, clipping and precision are the engine's, as in the real run.

Suggestion: the lr where the smoothed loss falls fastest, i.e. the minimum of
``d(smoothed loss) / d(log10 lr)`` (fastai's "steep" rule), which sits below the
divergence point with a margin. The model's original weights, the train/eval mode of every
sub-module and the global RNG states (python, numpy, torch, CUDA) are restored afterwards;
optimizer state is discarded. The model stays on the accelerator device, and gradient
checkpointing (when configured) stays on, as the Trainer would set both anyway. Run it before
building the Trainer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import nn
from torch.utils.data import Dataset

from router_pipelines.training.callbacks import TrainerCallback
from router_pipelines.training.config import NOTHING_SAVED, TrainingConfig
from router_pipelines.training.engine import NonFiniteLossError, Trainer
from router_pipelines.training.losses import LossFn
from router_pipelines.training.runtime import module_modes, restore_module_modes
from router_pipelines.training.state import TrainerState


@dataclass
class LRFinderResult:
    """The sweep: ``lrs[i]`` (base lr of step i) against ``losses[i]`` (smoothed)."""

    lrs: list[float]
    losses: list[float]  # bias-corrected exponential moving average of the step losses
    suggestion: float | None  # steepest descent of the smoothed curve; None below 3 points
    raw_losses: list[float] = field(default_factory=list)  # the step losses themselves


class _SweepRecorder(TrainerCallback):
    """Records each step's train loss, smoothed; asks to stop when it diverges."""

    def __init__(self, lr_at: list[float], smoothing: float, divergence_factor: float) -> None:
        self.lr_at, self.smoothing, self.divergence_factor = lr_at, smoothing, divergence_factor
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.raw_losses: list[float] = []
        self._average, self._best = 0.0, math.inf

    def on_step_end(self, state: TrainerState, logs: dict[str, float]) -> bool:
        loss = logs["train_loss"]  # logging_steps = 1: every step logs
        step = len(self.raw_losses)
        self._average = self.smoothing * self._average + (1 - self.smoothing) * loss
        smoothed = self._average / (1 - self.smoothing ** (step + 1))
        self.lrs.append(self.lr_at[state.global_step - 1])
        self.losses.append(smoothed)
        self.raw_losses.append(loss)
        self._best = min(self._best, smoothed)
        return not math.isfinite(smoothed) or smoothed > self.divergence_factor * self._best


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
        config: batch size, accumulation, param groups, precision, seed; its schedule,
            evaluation, checkpoint and resume settings are not used.
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
    lr_at = [
        start_lr * (end_lr / start_lr) ** (step / (num_steps - 1)) for step in range(num_steps)
    ]
    sweep = _sweep_config(config, num_steps)
    recorder = _SweepRecorder(lr_at, smoothing, divergence_factor)
    original = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    modes = module_modes(model)
    rng = _global_rng_states()
    trainer = None
    try:
        trainer = Trainer(
            model,
            loss_fn,
            train_dataset,
            config=sweep,
            lr_multiplier_fn=lambda step: lr_at[step] / sweep.learning_rate,
            callbacks=[recorder],
        )
        # The sweep ends at the first non-finite loss, as it does at divergence.
        with contextlib.suppress(NonFiniteLossError):
            trainer.train()
    finally:
        model.load_state_dict(original)
        model.zero_grad(set_to_none=True)
        restore_module_modes(modes)
        _restore_global_rng_states(rng)
        if trainer is not None:
            trainer.accelerator.free_memory()
    return LRFinderResult(
        recorder.lrs,
        recorder.losses,
        _steepest_descent(recorder.lrs, recorder.losses),
        recorder.raw_losses,
    )


def _sweep_config(config: TrainingConfig, num_steps: int) -> TrainingConfig:
    """``config`` with a constant schedule over ``num_steps``, a log per step, nothing saved."""
    return dataclasses.replace(
        config,
        run_name=None,  # nothing is written, so no folder is claimed
        max_steps=num_steps,
        scheduler="constant",
        warmup_steps=0,
        warmup_ratio=0.0,
        early_stopping=False,
        logging_steps=1,
        resume_from_checkpoint=None,
        **NOTHING_SAVED,
    )


def _global_rng_states() -> dict[str, object]:
    states: dict[str, object] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_global_rng_states(states: dict[str, object]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states:
        torch.cuda.set_rng_state_all(states["cuda"])


def plot_lr_finder(result: LRFinderResult) -> Figure:
    """Smoothed loss against lr (log scale) with the suggestion marked; an Agg figure."""
    figure = Figure(figsize=(6, 4))
    FigureCanvasAgg(figure)  # render off-screen; pyplot and its global backend stay untouched
    ax = figure.add_subplot()
    ax.plot(result.lrs, result.losses, label="smoothed loss")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("loss, nats per token (smoothed)")
    ax.set_title("learning-rate range test")
    ax.grid(alpha=0.3)
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


def _steepest_descent(lrs: list[float], losses: list[float]) -> float | None:
    if len(lrs) < 3:
        return None
    slopes = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))
    return float(lrs[int(np.argmin(slopes))])
