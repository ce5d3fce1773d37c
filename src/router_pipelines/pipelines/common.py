"""Pieces every family's nodes share: training summaries, the loss figure, registration rules.

Not a pipeline: plain functions the families' nodes call, so that every family reports a
trained or reused model the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router_pipelines.config import RegisterConfig

# Metric histories kept in a model's router_pipelines.json (to redraw its loss curve when the
# model is reused) are thinned to at most this many points per metric.
MAX_HISTORY_POINTS = 500


def trained_summary(result: Any, identity: Any, **extra: Any) -> dict[str, Any]:
    """The summary of a model trained in this run: numbers from the engine's ``TrainResult``."""
    return {
        "origin": "train",
        "fingerprint": identity.fingerprint,
        "parameters": sum(p.numel() for p in result.model.parameters()),
        "trainable_parameters": sum(
            p.numel() for p in result.model.parameters() if p.requires_grad
        ),
        "global_step": result.global_step,
        "tokens_seen": result.tokens_seen,
        "train_loss": result.train_loss,
        "best_eval_loss": result.best_eval_loss,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_seen / max(result.seconds, 1e-9), 1),
        "run_dir": getattr(result, "run_dir", None),
        **extra,
    }


def validation_report(
    model: Any, validation_tokens: Any, tokenizer: Any, batch_size: int, max_batches: int | None
) -> dict[str, float]:
    """Loss, perplexity, bits per byte and token accuracy of ``model`` on the validation split:
    the numbers every family reports, comparable across tokenizers through bits per byte."""
    from router_pipelines.data.tokenizer import token_byte_lengths
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.evaluation import evaluate_language_model

    metrics = evaluate_language_model(
        model,
        TokenBlockDataset(validation_tokens),
        batch_size=batch_size,
        max_batches=max_batches,
        token_bytes=token_byte_lengths(tokenizer),
    )
    keys = ("loss", "perplexity", "bits_per_byte", "token_accuracy")
    return {f"validation_{key}": float(metrics[key]) for key in keys}


def reused_summary(decision: Any) -> dict[str, Any]:
    """The summary of a reused model: its own training summary plus where it came from."""
    return recorded_summary(decision.metadata, decision.origin, decision.where)


def recorded_summary(metadata: Mapping[str, Any] | None, origin: str, where: str) -> dict:
    """The training summary recorded in a saved model's ``metadata``, with ``origin`` and
    ``reused_from`` saying where this run got the model."""
    recorded = dict((metadata or {}).get("training") or {})
    recorded.pop("origin", None)
    return {**recorded, "origin": origin, "reused_from": where}


def thin_history(history: Mapping[str, list]) -> dict[str, list]:
    """``history`` with at most :data:`MAX_HISTORY_POINTS` points per metric (last one kept)."""
    thinned = {}
    for key, points in history.items():
        points = list(points)
        if len(points) > MAX_HISTORY_POINTS:
            stride = -(-len(points) // MAX_HISTORY_POINTS)
            points = points[::stride] + ([points[-1]] if (len(points) - 1) % stride else [])
        thinned[key] = [list(point) for point in points]
    return thinned


def history_figure(metadata: Mapping[str, Any] | None, title: str) -> Any:
    """The loss curve of a model from the history in its metadata (reused models included)."""
    from router_pipelines.tracking import loss_curve_figure

    history = (metadata or {}).get("history") or {}
    origin = ((metadata or {}).get("training") or {}).get("origin")
    reused = "" if origin in (None, "train") else f" — reused ({origin})"
    return loss_curve_figure({k: [tuple(p) for p in v] for k, v in history.items()}, title + reused)


def registration_skipped(config: RegisterConfig, summary: Mapping[str, Any]) -> dict | None:
    """Why a provider's model is not registered now, or ``None`` when it must be.

    Only a model trained in this run is registered: a reused one already is (or is a saved copy
    of one), and re-registering it would make two versions of one model. Under ``accelerate
    launch`` only the main process registers: it holds the MLflow run.
    """
    from router_pipelines.hooks import is_main_process

    if not is_main_process():
        return {"registered": False, "reason": "not the main process"}
    if not config.enabled:
        return {"registered": False, "reason": "register.enabled is false"}
    if summary.get("origin") != "train":
        return {
            "registered": False,
            "reason": f"not trained in this run ({summary.get('origin')}: "
            f"{summary.get('reused_from') or summary.get('name_or_path')})",
        }
    return None
