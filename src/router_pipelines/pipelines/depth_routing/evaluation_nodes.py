"""Evaluation and registration nodes of the ``depth_routing`` namespace (seed 003): dense vs
routed side by side, the routed model registered, and a registered champion re-scored on this
run's validation split for promotion.

Heavy libraries are imported inside the nodes, so listing or validating pipelines stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from router_pipelines.model_source import FINGERPRINT_TAG
from router_pipelines.pipelines.common import registration_skipped, validation_report
from router_pipelines.pipelines.depth_routing.config import (
    HEADLINE_METRICS,
    parse_depth_routing_params,
)
from router_pipelines.pipelines.depth_routing.nodes import FAMILY


def evaluate_depth_routing(
    best_model: Any,
    dense_model: Any,
    training_summary: dict[str, Any],
    dense_summary: dict[str, Any],
    validation_tokens: Any,
    evaluation_params: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """Side by side: dense vs routed (top-k, teacher-forced) vs routed (causal, what
    generation does): validation loss, bits per byte, analytic FLOPs per token, measured
    train-step time and generation tokens/s; the router statistics; the comparison at equal
    steps and at equal training FLOPs. The router statistics and the comparison are logged.

    Returns:
        The evaluation table (one row per model and routing) and the routing report.
    """
    import pandas as pd

    from router_pipelines.tracking import log_metrics

    config = parse_depth_routing_params({"evaluation": evaluation_params}).evaluation
    routed = best_model.model
    rows, stats = routing_evaluation(
        best_model.model,
        getattr(dense_model, "model", None),
        validation_tokens,
        best_model.tokenizer,
        config,
        speed=config.speed,
    )
    report = {
        "model_type": routed.routing_config.model_type,
        "capacity_gamma": routed.routing_config.capacity_gamma,
        "seq_len": int(validation_tokens.seq_len),
        "router_statistics": stats,
        "rows": rows,
        "comparison": _comparison(rows, training_summary, dense_summary),
    }
    log_metrics(
        {
            "predictor_accuracy": stats["predictor_accuracy"],
            "causal_share": stats["causal_share"],
            **{k: v for k, v in report["comparison"].items() if isinstance(v, float)},
        }
    )
    return pd.DataFrame(rows), report


def rescore_depth_routing(
    bundle: Any,
    validation_tokens: Any,
    tokenizer: Any,
    evaluation_params: dict[str, Any],
) -> dict[str, float]:
    """The registered metrics of a registered MoD / DTF model (the champion, in promotion) on
    this run's validation split, by the evaluation of :func:`evaluate_depth_routing` (same
    batches; top-k and causal routing, the causal thresholds the model was registered with);
    nothing is logged, no speed is measured (no registered metric is a speed).

    No registered metric involves the dense baseline, so none is needed. ``validation_loss``
    and ``validation_bits_per_byte`` are the top-k row's: the challenger's come from its
    training summary, the same :func:`validation_report` of the same model in top-k routing.

    Raises:
        ValueError: the bundle is not a depth-routing model, or its tokenizer is not the data's.
    """
    from router_pipelines.promotion import check_same_tokenizer

    if bundle.family != FAMILY or not hasattr(bundle.model, "routing_config"):
        raise ValueError(
            f"the model to re-score: family {bundle.family!r} ({type(bundle.model).__name__}), "
            f"not a {FAMILY!r} MoD / DTF model"
        )
    check_same_tokenizer(bundle, tokenizer, "the routed model to re-score")
    config = parse_depth_routing_params({"evaluation": evaluation_params}).evaluation
    rows, stats = routing_evaluation(
        bundle.model, None, validation_tokens, tokenizer, config, speed=False
    )
    topk = next(row for row in rows if row["routing"] == "topk")
    return registered_metrics(topk, rows, stats)


def routing_evaluation(
    routed: Any,
    dense: Any | None,
    validation_tokens: Any,
    tokenizer: Any,
    config: Any,
    speed: bool,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The rows of :func:`evaluate_depth_routing`'s table (dense if given, routed top-k, routed
    causal: validation metrics, ``flops_*``, with ``speed`` the measured speed) and the router
    statistics of ``routed`` (a ``DepthRoutingLM``) on ``validation_tokens``; logs nothing.
    ``config``: the parsed ``depth_routing.evaluation``."""
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.families.depth_routing import (
        flops_per_token,
        measure_speed,
        routing_statistics,
    )

    seq_len = int(validation_tokens.seq_len)
    vocab = routed.config.vocab_size
    rows = []
    candidates = [("dense", "dense", dense)]
    candidates += [(routed.routing_config.model_type, "topk", routed)]
    candidates += [(routed.routing_config.model_type, "causal", routed)]
    for name, routing, model in candidates:
        if model is None:
            continue
        row: dict[str, Any] = {"model": name, "routing": routing}
        if routing == "dense":
            flops = flops_per_token(model.config, None, seq_len)
            row.update(_quality(model, validation_tokens, tokenizer, config))
        else:
            flops = flops_per_token(model.config, model.routing_config, seq_len)
            with model.routing_mode_as(routing):
                row.update(_quality(model, validation_tokens, tokenizer, config))
        row.update({f"flops_{k}": v for k, v in flops.items()})
        if speed and routing != "causal":  # generation always routes causally
            row.update(
                measure_speed(
                    model,
                    vocab,
                    seq_len,
                    config.speed_batch_size,
                    config.speed_iters,
                    config.decode_tokens,
                )
            )
        rows.append(row)
    dataset = TokenBlockDataset(validation_tokens)
    stats = routing_statistics(routed, dataset, config.batch_size, config.max_batches)
    return rows, stats


def registered_metrics(
    validation: Mapping[str, Any], rows: list[dict[str, Any]], stats: Mapping[str, Any]
) -> dict[str, float]:
    """:data:`HEADLINE_METRICS`, what :func:`register_depth_routing` reports: ``validation``'s
    top-k loss and bits per byte, the causal row's loss and FLOPs per token (analytic, the same
    in both rows), the router statistics' predictor accuracy and causal share."""
    causal = next(row for row in rows if row["routing"] == "causal")
    metrics = {
        "validation_loss": validation["validation_loss"],
        "validation_bits_per_byte": validation["validation_bits_per_byte"],
        "causal_validation_loss": causal["validation_loss"],
        "predictor_accuracy": stats["predictor_accuracy"],
        "flops_per_token": causal["flops_total"],
        "routed_share": stats["causal_share"],
    }
    return {key: float(metrics[key]) for key in HEADLINE_METRICS}


def register_depth_routing(
    best_model: Any,
    training_summary: dict[str, Any],
    routing_report: dict[str, Any],
    register_params: dict[str, Any],
) -> dict[str, Any]:
    """Register the best routed model trained in this run as ``mod_lm`` / ``dtf_lm`` (debug:
    ``*_debug``), its pyfunc generating causally; headline metrics as version tags."""
    from router_pipelines.serving import register_model

    config = parse_depth_routing_params({"register": register_params}).register
    kind = training_summary["model_type"]
    register = config.for_type(kind)
    skipped = registration_skipped(register, training_summary)
    if skipped is not None:
        return skipped
    metrics = registered_metrics(
        training_summary, routing_report["rows"], routing_report["router_statistics"]
    )
    tags = {  # register_model adds the headline metrics as tags and links them to the model
        "model_type": kind,
        "capacity_gamma": training_summary["capacity_gamma"],
        FINGERPRINT_TAG: training_summary["fingerprint"],
    }
    info = register_model(
        best_model,
        register.name,
        wrapper=FAMILY,
        tags=tags,
        description=register.description,
        metrics=metrics,
        step=training_summary.get("global_step"),
    )
    return {"registered": True, **info, "metrics": metrics}


def _quality(model: Any, validation_tokens: Any, tokenizer: Any, config: Any) -> dict:
    return validation_report(
        model, validation_tokens, tokenizer, config.batch_size, config.max_batches
    )


def _comparison(
    rows: list[dict[str, Any]], routed: dict[str, Any], dense: dict[str, Any]
) -> dict[str, Any]:
    """Routed vs dense at equal steps (validation loss ratio, step-time ratio, FLOPs ratio)
    and at equal training FLOPs (the dense eval loss at the step where its training FLOPs
    equal the routed run's, interpolated in its eval history)."""
    by = {(r["model"], r["routing"]): r for r in rows}
    dense_row = by.get(("dense", "dense"))
    kind = routed["model_type"]
    topk, causal = by[(kind, "topk")], by[(kind, "causal")]
    out: dict[str, Any] = {"steps": routed["global_step"]}
    if dense_row is None:
        return out | {"note": "dense_baseline disabled: no comparison"}
    out["loss_ratio_equal_steps"] = topk["validation_loss"] / dense_row["validation_loss"]
    out["causal_loss_ratio_equal_steps"] = causal["validation_loss"] / dense_row["validation_loss"]
    out["flops_ratio_blocks"] = topk["flops_blocks"] / dense_row["flops_blocks"]
    out["flops_ratio_total"] = topk["flops_total"] / dense_row["flops_total"]
    if "train_step_s" in topk and "train_step_s" in dense_row:
        out["step_time_ratio"] = topk["train_step_s"] / dense_row["train_step_s"]
        out["generate_speedup"] = topk["generate_tokens_per_s"] / dense_row["generate_tokens_per_s"]
    history = [tuple(p) for p in (dense.get("history") or {}).get("eval_loss", [])]
    equal_step = routed["global_step"] * out["flops_ratio_total"]
    out["dense_step_at_equal_flops"] = equal_step
    out["dense_eval_loss_at_equal_flops"] = _interpolate(history, equal_step)
    out["routed_eval_loss"] = routed.get("best_eval_loss")
    return out


def _interpolate(points: list[tuple[float, float]], step: float) -> float | None:
    if not points:
        return None
    points = sorted(points)
    if step <= points[0][0]:
        return None  # before the first evaluation: not measured
    for (s0, v0), (s1, v1) in zip(points, points[1:], strict=False):
        if s0 <= step <= s1:
            return float(v0 + (v1 - v0) * (step - s0) / (s1 - s0))
    return float(points[-1][1])
