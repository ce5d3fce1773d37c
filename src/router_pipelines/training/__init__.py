"""One training engine on Accelerate, shared by every model family.

A family brings a model and a loss function ``loss_fn(model, batch, step)``; the
engine does the loop, precision, accumulation, clipping, schedules, evaluation (named eval
sets, dataset-level eval callbacks), best model and early stopping on any metric, step
callbacks, per-run folders of atomic checkpoints with exact resume (full or trainable-only),
and several processes.
"""

from router_pipelines.training.callbacks import TrainerCallback
from router_pipelines.training.config import RESULT_NEUTRAL_FIELDS, TrainingConfig
from router_pipelines.training.engine import NonFiniteLossError, Trainer
from router_pipelines.training.eval_loop import EvalCallback
from router_pipelines.training.losses import LossFn, causal_lm_loss, combine_losses
from router_pipelines.training.lr_finder import LRFinderResult, find_lr, plot_lr_finder
from router_pipelines.training.result import TrainResult
from router_pipelines.training.runs import find_latest_checkpoint, result_affecting_fields
from router_pipelines.training.runtime import (
    PrecisionPlan,
    describe_precision,
    precision_plan,
    resolve_mixed_precision,
)
from router_pipelines.training.state import TrainerState

__all__ = [
    "RESULT_NEUTRAL_FIELDS",
    "EvalCallback",
    "LRFinderResult",
    "LossFn",
    "NonFiniteLossError",
    "PrecisionPlan",
    "TrainResult",
    "Trainer",
    "TrainerCallback",
    "TrainerState",
    "TrainingConfig",
    "causal_lm_loss",
    "combine_losses",
    "describe_precision",
    "find_latest_checkpoint",
    "find_lr",
    "plot_lr_finder",
    "precision_plan",
    "resolve_mixed_precision",
    "result_affecting_fields",
]
