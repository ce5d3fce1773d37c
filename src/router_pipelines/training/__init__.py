"""One training engine on Accelerate, shared by every model family.

A family brings a model and a loss function ``loss_fn(model, batch, step)``; the
engine does the loop, precision, accumulation, clipping, schedules, evaluation,
early stopping, atomic checkpoints with exact resume, and several processes.
"""

from router_pipelines.training.config import TrainingConfig
from router_pipelines.training.engine import NonFiniteLossError, Trainer, TrainResult
from router_pipelines.training.losses import LossFn, causal_lm_loss
from router_pipelines.training.lr_finder import LRFinderResult, find_lr, plot_lr_finder
from router_pipelines.training.runtime import resolve_mixed_precision

__all__ = [
    "LRFinderResult",
    "LossFn",
    "NonFiniteLossError",
    "TrainResult",
    "Trainer",
    "TrainingConfig",
    "causal_lm_loss",
    "find_lr",
    "plot_lr_finder",
    "resolve_mixed_precision",
]
