"""One training engine on Accelerate, shared by every model family.

A family brings a model and a loss function ``loss_fn(model, batch, step)``; the
engine does the loop, precision, accumulation, clipping, schedules, evaluation (named eval
sets, dataset-level eval callbacks), best model and early stopping on any metric, step
callbacks, per-run folders of atomic checkpoints with exact resume (full or trainable-only),
and several processes.
"""

from router_pipelines.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "EvalCallback": "eval_loop",
        "LRFinderResult": "lr_finder",
        "LossFn": "losses",
        "NonFiniteLossError": "engine",
        "PrecisionPlan": "runtime",
        "RESULT_NEUTRAL_FIELDS": "config",
        "TrainResult": "result",
        "Trainer": "engine",
        "TrainerCallback": "callbacks",
        "TrainerState": "state",
        "TrainingConfig": "config",
        "causal_lm_loss": "losses",
        "combine_losses": "losses",
        "describe_precision": "runtime",
        "find_latest_checkpoint": "runs",
        "find_lr": "lr_finder",
        "plot_lr_finder": "lr_finder",
        "precision_plan": "runtime",
        "resolve_mixed_precision": "runtime",
        "result_affecting_fields": "runs",
    },
)
