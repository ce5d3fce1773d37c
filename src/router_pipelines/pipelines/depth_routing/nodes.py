"""Nodes of the ``depth_routing`` namespace (seed 003): train MoD / DTF and the dense baseline
on the same data and steps, evaluate them side by side, register the routed model.

Heavy libraries are imported inside the nodes, so listing or validating pipelines stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from router_pipelines.model_source import (
    FINGERPRINT_TAG,
    IDENTITY_KEY,
    ModelIdentity,
    decide_source,
    fingerprint_of,
    tokenizer_digest,
    tokenizer_problems,
)
from router_pipelines.pipelines.common import (
    history_figure,
    registration_skipped,
    reused_summary,
    thin_history,
    trained_summary,
    validation_report,
)
from router_pipelines.pipelines.depth_routing.config import (
    DepthRoutingParams,
    parse_depth_routing_params,
)

logger = logging.getLogger(__name__)

FAMILY = "depth_routing"


def resolve_params(groups: dict[str, Any], model_type: str | None) -> DepthRoutingParams:
    """The typed group, with the model type the pipeline fixes (``mod`` / ``dtf``)."""
    params = parse_depth_routing_params(groups)
    if model_type is not None and model_type != params.model_type:
        logger.info(
            "pipeline %r fixes depth_routing.model_type (parameters say %r)",
            model_type,
            params.model_type,
        )
    return params.fixed(model_type)


def _identity(params: DepthRoutingParams, train_tokens: Any, tokenizer: Any, what: str):
    from router_pipelines.training import result_affecting_fields

    return ModelIdentity(
        {
            "family": FAMILY if what != "dense" else "causal_lm",
            "model_type": what,
            "mode": params.mode,
            "model": asdict(params.model),
            "loss": asdict(params.loss) if what != "dense" else None,
            "training": result_affecting_fields(params.training),
            "data": train_tokens.fingerprint,
            "tokenizer": tokenizer_digest(tokenizer),
        }
    )


def build_base_model(params: DepthRoutingParams, tokenizer: Any) -> Any:
    """The dense model both runs start from: the preset from scratch (seeded) or, for
    transfer, ``model.name_or_path`` loaded from local files or the hub cache."""
    from router_pipelines.models.presets import build_causal_lm

    model = build_causal_lm(params.model, tokenizer, seed=params.training.seed)
    problems = tokenizer_problems(model, tokenizer)
    if problems:
        raise ValueError(
            f"depth_routing.model ({params.model.name_or_path or params.model.preset}) does not "
            "fit the data's tokenizer: " + "; ".join(problems) + ". For transfer set "
            "data.tokenizer.name_or_path to the same model"
        )
    return model


def train_routed_model(
    train_tokens: Any,
    validation_tokens: Any,
    tokenizer: Any,
    saved_models: Any,
    saved_best_models: Any,
    model_registry: Any,
    *groups: Any,
    model_type: str | None = None,
) -> tuple[Any, Any, dict[str, Any], Any, Any, dict[str, Any]]:
    """Provide the MoD or DTF model: reuse a saved or registered one with the same identity
    (``depth_routing.source``, see :mod:`router_pipelines.model_source`), else train it with
    the shared engine.

    Args:
        saved_models: the ``ModelStore`` of final models (``depth_routing.saved_models``).
        saved_best_models: the ``ModelStore`` of best models (``depth_routing_best``): the
            one looked up first, since the best model is the one evaluated and registered.
        model_registry: the ``ModelRegistry`` (``source: auto`` / ``registry``).

    Returns:
        The final model and the best one (bundles with the tokenizer), the training summary
        (with validation loss and bits per byte), the loss-curve figure, the router-statistics
        figure (S_CE / S_CU over training for DTF) and the resolved configuration.
    """
    params = resolve_params(_groups(groups), model_type)
    kind = params.model_type
    identity = _identity(params, train_tokens, tokenizer, kind)
    routing = params.model.routing(kind)
    resolved = asdict(params) | {"model_type": kind}
    title = f"{kind} (γ={routing.capacity_gamma})"
    decision = _decide_source(params, kind, identity, saved_best_models, model_registry)
    if decision.reused:
        best_bundle = decision.bundle
        problems = tokenizer_problems(best_bundle.model, tokenizer)
        if problems:
            raise ValueError(
                f"depth_routing.source: {decision.where} does not fit the data's tokenizer: "
                + "; ".join(problems)
            )
        final = _saved_final(saved_models, identity.fingerprint) or best_bundle
        summary = reused_summary(decision)
        figures = _figures(decision.metadata, title)
        return final, best_bundle, summary, *figures, resolved
    final_bundle, best_bundle, summary = _train_routed(
        params, kind, identity, train_tokens, validation_tokens, tokenizer
    )
    return final_bundle, best_bundle, summary, *_figures(best_bundle.metadata, title), resolved


def _decide_source(params: Any, kind: str, identity: Any, saved: Any, registry: Any) -> Any:
    from dataclasses import asdict as as_dict

    return decide_source(
        as_dict(params.source),
        "depth_routing.source",
        identity,
        saved,
        registry,
        registry_name=params.register.names[kind],
    )


def _saved_final(saved_models: Any, fingerprint: str) -> Any:
    """The newest saved final model with ``fingerprint`` (loaded), or ``None``."""
    stored = saved_models.newest(lambda meta: fingerprint_of(meta) == fingerprint)
    return None if stored is None else stored.load()


def _figures(metadata: Any, title: str) -> tuple[Any, Any]:
    """The loss curve and the router-statistics curve of a model from its metadata."""
    from router_pipelines.pipelines.depth_routing.plots import routing_history_figure

    history = (metadata or {}).get("history") or {}
    return history_figure(metadata, title), routing_history_figure(history, title)


def _train_routed(
    params: DepthRoutingParams,
    kind: str,
    identity: ModelIdentity,
    train_tokens: Any,
    validation_tokens: Any,
    tokenizer: Any,
) -> tuple[Any, Any, dict[str, Any]]:
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.families.depth_routing import eval_loss, make_depth_routing_loss
    from router_pipelines.models.depth_routing_lm import DepthRoutingLM
    from router_pipelines.tracking import log_metrics, metric_logger
    from router_pipelines.training import Trainer

    routing = params.model.routing(kind)
    base = build_base_model(params, tokenizer)
    model = DepthRoutingLM.from_base(copy.deepcopy(base), routing)
    del base
    weights = {
        "router_bce": params.loss.router_aux_weight,
        "predictor_bce": params.loss.predictor_weight,
        "prior_mse": params.loss.prior_loss_weight,
    }
    training = dataclasses.replace(
        params.training, output_dir=str(Path(params.training.output_dir) / kind)
    )
    trainer = Trainer(
        model,
        make_depth_routing_loss(weights),
        TokenBlockDataset(train_tokens),
        TokenBlockDataset(validation_tokens),
        config=training,
        eval_loss_fn=eval_loss,
        log_fn=metric_logger(),
        run_config={k: v for k, v in identity.inputs.items() if k != "training"},
    )
    result = trainer.train()
    final = result.model.cpu().eval()
    best_dir = result.best_model_dir  # the engine's best/ (HF-style folder of this model)
    best = DepthRoutingLM.from_pretrained(best_dir) if best_dir else final
    calibration = _calibration_batches(validation_tokens, params.evaluation)
    thresholds = {
        which: model.calibrate_causal_thresholds(calibration)
        for which, model in (("final", final), ("best", best))
    }
    validation = _validation(best, validation_tokens, tokenizer, params)
    log_metrics(validation, step=result.global_step)
    summary = trained_summary(
        result,
        identity,
        model_type=kind,
        mode=params.mode,
        capacity_gamma=routing.capacity_gamma,
        routed_layers=final.routed_layer_indices(),
        best_model_dir=best_dir,
        causal_thresholds=thresholds,
        **validation,
    )
    logger.info("%s model trained: %s", kind, summary)
    metadata = {
        "family": FAMILY,
        "model_type": kind,
        "training": summary,
        "routing_config": asdict(routing),
        IDENTITY_KEY: identity.to_metadata(),
        "history": thin_history(result.history),
    }
    final_bundle = _bundle(final, tokenizer, metadata, "final")
    best_bundle = _bundle(best, tokenizer, metadata, "best")
    return final_bundle, best_bundle, summary


def train_dense_baseline(
    train_tokens: Any,
    validation_tokens: Any,
    tokenizer: Any,
    *groups: Any,
    model_type: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The dense model of the same shape, trained by the same engine on the same data, steps
    and settings (``dense_baseline.enabled: false`` skips it: ``({"enabled": false}, ...)``,
    Kedro saves no ``None``)."""
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.tracking import log_metrics, metric_logger
    from router_pipelines.training import Trainer, causal_lm_loss

    params = resolve_params(_groups(groups), model_type)
    if not params.dense_baseline.enabled:
        return {"enabled": False}, {"enabled": False}
    identity = _identity(params, train_tokens, tokenizer, "dense")
    training = dataclasses.replace(
        params.training, output_dir=str(Path(params.training.output_dir) / "dense")
    )
    trainer = Trainer(
        build_base_model(params, tokenizer),
        causal_lm_loss,
        TokenBlockDataset(train_tokens),
        TokenBlockDataset(validation_tokens),
        config=training,
        log_fn=metric_logger("dense_"),
        run_config={k: v for k, v in identity.inputs.items() if k != "training"},
    )
    result = trainer.train()
    model = result.model.cpu().eval()
    validation = _validation(model, validation_tokens, tokenizer, params)
    log_metrics({f"dense_{k}": v for k, v in validation.items()}, step=result.global_step)
    summary = trained_summary(result, identity, model_type="dense", **validation)
    summary["enabled"] = True
    summary["history"] = thin_history(result.history)
    metadata = {"family": "causal_lm", "training": summary, IDENTITY_KEY: identity.to_metadata()}
    return ModelBundle(model=model, tokenizer=tokenizer, metadata=metadata), summary


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
    steps and at equal training FLOPs.

    Returns:
        The evaluation table (one row per model and routing) and the routing report.
    """
    import pandas as pd

    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.families.depth_routing import (
        flops_per_token,
        measure_speed,
        routing_statistics,
    )
    from router_pipelines.tracking import log_metrics

    config = parse_depth_routing_params({"evaluation": evaluation_params}).evaluation
    routed = best_model.model
    tokenizer = best_model.tokenizer
    seq_len = int(validation_tokens.seq_len)
    vocab = routed.config.vocab_size
    dataset = TokenBlockDataset(validation_tokens)
    rows = []
    candidates = [("dense", "dense", getattr(dense_model, "model", None))]
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
        if config.speed and routing != "causal":  # generation always routes causally
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
    table = pd.DataFrame(rows)
    stats = routing_statistics(routed, dataset, config.batch_size, config.max_batches)
    report = {
        "model_type": routed.routing_config.model_type,
        "capacity_gamma": routed.routing_config.capacity_gamma,
        "seq_len": seq_len,
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
    return table, report


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
    causal = next(r for r in routing_report["rows"] if r["routing"] == "causal")
    stats = routing_report["router_statistics"]
    metrics = {
        "validation_loss": training_summary["validation_loss"],
        "validation_bits_per_byte": training_summary["validation_bits_per_byte"],
        "causal_validation_loss": causal["validation_loss"],
        "predictor_accuracy": stats["predictor_accuracy"],
        "flops_per_token": causal["flops_total"],
        "routed_share": stats["causal_share"],
    }
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


def _groups(values: tuple[Any, ...]) -> dict[str, Any]:
    names = (
        "model_type",
        "mode",
        "model",
        "loss",
        "training",
        "dense_baseline",
        "evaluation",
        "register",
        "source",
    )
    return dict(zip(names, values, strict=True))


def _calibration_batches(validation_tokens: Any, evaluation: Any) -> list[Any]:
    """Input ids (B, T) of the evaluation batches of the validation split, for calibration."""
    from torch.utils.data import DataLoader

    from router_pipelines.data.torch_dataset import TokenBlockDataset

    batches = []
    for batch in DataLoader(TokenBlockDataset(validation_tokens), batch_size=evaluation.batch_size):
        if evaluation.max_batches is not None and len(batches) >= evaluation.max_batches:
            break
        batches.append(batch["input_ids"])
    return batches


def _validation(model: Any, validation_tokens: Any, tokenizer: Any, params: Any) -> dict:
    return validation_report(
        model,
        validation_tokens,
        tokenizer,
        params.evaluation.batch_size,
        params.evaluation.max_batches,
    )


def _quality(model: Any, validation_tokens: Any, tokenizer: Any, config: Any) -> dict:
    return validation_report(
        model, validation_tokens, tokenizer, config.batch_size, config.max_batches
    )


def _bundle(model: Any, tokenizer: Any, metadata: dict[str, Any], which: str) -> Any:
    from router_pipelines.models.bundle import ModelBundle

    return ModelBundle(model=model, tokenizer=tokenizer, metadata={**metadata, "which": which})


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
