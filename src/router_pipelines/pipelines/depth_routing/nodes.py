"""Training nodes of the ``depth_routing`` namespace (seed 003): train MoD / DTF and the dense
baseline on the same data and steps (evaluation and registration: :mod:`.evaluation_nodes`).

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
    IDENTITY_KEY,
    ModelIdentity,
    decide_source,
    fingerprint_of,
    tokenizer_digest,
    tokenizer_problems,
)
from router_pipelines.pipelines.common import (
    history_figure,
    recorded_summary,
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
    from router_pipelines.models.dtf import DTF_REVISION
    from router_pipelines.training import result_affecting_fields

    inputs = {
        "family": FAMILY if what != "dense" else "causal_lm",
        "model_type": what,
        "mode": params.mode,
        "model": asdict(params.model),
        "loss": asdict(params.loss) if what != "dense" else None,
        "training": result_affecting_fields(params.training),
        "data": train_tokens.fingerprint,
        "tokenizer": tokenizer_digest(tokenizer),
    }
    if what == "dtf":  # a DTF model saved before the last change of its layers is not reused
        inputs["dtf_revision"] = DTF_REVISION
    return ModelIdentity(inputs)


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
    saved_dense_models: Any,
    *groups: Any,
    model_type: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The dense model of the same shape, trained by the same engine on the same data, steps
    and settings (``dense_baseline.enabled: false`` skips it: ``({"enabled": false}, ...)``,
    Kedro saves no ``None``).

    The newest saved dense model with the same identity (shape, training settings, data,
    tokenizer: ``saved_dense_models``, the ``depth_routing_dense`` versions) is reused instead
    of training again, unless ``depth_routing.source.source`` is ``train``; its summary is its
    own, with ``origin: catalog`` and where it came from.
    """
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.tracking import log_metrics, metric_logger
    from router_pipelines.training import Trainer, causal_lm_loss

    params = resolve_params(_groups(groups), model_type)
    if not params.dense_baseline.enabled:
        return {"enabled": False}, {"enabled": False}
    identity = _identity(params, train_tokens, tokenizer, "dense")
    if params.source.source != "train":
        stored = saved_dense_models.newest(
            lambda meta: fingerprint_of(meta) == identity.fingerprint
        )
        if stored is not None:
            logger.info("dense baseline: reusing %s (same identity)", stored.path)
            return stored.load(), recorded_summary(stored.metadata, "catalog", str(stored.path))
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


def _bundle(model: Any, tokenizer: Any, metadata: dict[str, Any], which: str) -> Any:
    from router_pipelines.models.bundle import ModelBundle

    return ModelBundle(model=model, tokenizer=tokenizer, metadata={**metadata, "which": which})
