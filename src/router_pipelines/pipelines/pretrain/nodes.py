"""Nodes of the ``pretrain`` namespace: provide the base causal LM (train it or reuse one), register it.

Heavy libraries (torch, transformers, mlflow) are imported inside the nodes, so listing or
validating pipelines stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from router_pipelines.model_source import (
    FINGERPRINT_TAG,
    IDENTITY_KEY,
    ModelIdentity,
    decide_source,
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
from router_pipelines.pipelines.pretrain.config import PretrainParams, parse_pretrain_params

logger = logging.getLogger(__name__)

FAMILY = "causal_lm"
# Saved with every registered version (MLflow runs the model on it once when logging it).
INPUT_EXAMPLE = ["def add(a, b):"]


def base_model_identity(params: PretrainParams, train_tokens: Any, tokenizer: Any) -> ModelIdentity:
    """What determines the trained base model (see :mod:`router_pipelines.model_source`)."""
    from router_pipelines.training import result_affecting_fields

    return ModelIdentity(
        {
            "family": FAMILY,
            "model": asdict(params.model),
            "training": result_affecting_fields(params.training),
            "lr_finder": asdict(params.lr_finder) if params.lr_finder.enabled else None,
            "data": train_tokens.fingerprint,
            "tokenizer": tokenizer_digest(tokenizer),
        }
    )


def train_base_model(
    train_tokens: Any,
    validation_tokens: Any,
    tokenizer: Any,
    saved_models: Any,
    model_registry: Any,
    model_params: dict[str, Any],
    training_params: dict[str, Any],
    lr_finder_params: dict[str, Any],
    register_params: dict[str, Any],
    source_params: dict[str, Any] | None = None,
    *,
    source_key: str = "pretrain.source",
    metric_prefix: str = "",
) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """The base causal LM: trained from its preset (or hub/local weights), or reused.

    Without ``source_params`` it always trains (``kedro run --pipeline=pretrain``); with them
    (``ModelSourceConfig``, e.g. ``switchable.base`` when the switchable pipeline runs alone)
    a compatible saved or registered model is reused first, see
    :func:`~router_pipelines.model_source.resolve_source`.

    ``metric_prefix`` goes before every logged metric name (another family's node training a
    causal LM of its own, e.g. the query router's ``ladder_lm_``, keeps its metrics apart).

    Returns:
        The model with its tokenizer, a summary (numbers and where it came from), the loss-curve
        figure and the resolved configuration (the last three logged to MLflow by the catalog).
    """

    params = parse_pretrain_params(
        {
            "model": model_params,
            "training": training_params,
            "lr_finder": lr_finder_params,
            "register": register_params,
        }
    )
    identity = base_model_identity(params, train_tokens, tokenizer)
    decision = decide_source(
        source_params,
        source_key,
        identity,
        saved_models,
        model_registry,
        registry_name=params.register.name,
    )
    resolved = asdict(params) | {"source": dict(source_params or {"source": "train"})}
    if decision.reused:
        _check_fits_tokenizer(decision.bundle.model, tokenizer, decision.where)
        summary = reused_summary(decision)
        return decision.bundle, summary, history_figure(decision.metadata, "pretrain"), resolved
    if decision.origin == "pretrained":
        return _pretrained_as_is(params, tokenizer, identity, resolved)
    bundle, summary, figure = _train(
        params, identity, train_tokens, validation_tokens, tokenizer, metric_prefix
    )
    return bundle, summary, figure, resolved


def _train(
    params: PretrainParams,
    identity: ModelIdentity,
    train_tokens: Any,
    validation_tokens: Any,
    tokenizer: Any,
    metric_prefix: str = "",
) -> tuple[Any, dict[str, Any], Any]:
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.models.presets import build_causal_lm
    from router_pipelines.tracking import log_metrics, metric_logger
    from router_pipelines.training import Trainer, causal_lm_loss

    model = build_causal_lm(params.model, tokenizer, seed=params.training.seed)
    _check_fits_tokenizer(model, tokenizer, params.model.name_or_path or params.model.preset)
    train_set, eval_set = TokenBlockDataset(train_tokens), TokenBlockDataset(validation_tokens)
    if params.lr_finder.enabled:
        _run_lr_finder(model, train_set, params)
    trainer = Trainer(
        model,
        causal_lm_loss,
        train_set,
        eval_set,
        config=params.training,
        log_fn=metric_logger(metric_prefix),
        run_config={key: value for key, value in identity.inputs.items() if key != "training"},
    )
    result = trainer.train()
    training = params.training
    validation = validation_report(
        result.model,
        validation_tokens,
        tokenizer,
        training.eval_batch_size or training.batch_size,
        training.eval_max_batches,
    )
    log_metrics({f"{metric_prefix}{k}": v for k, v in validation.items()}, step=result.global_step)
    summary = trained_summary(result, identity, **validation)
    logger.info("Base model trained: %s", summary)
    bundle = ModelBundle(
        model=result.model.cpu(),
        tokenizer=tokenizer,
        metadata={
            "family": FAMILY,
            "training": summary,
            "model_config": asdict(params.model),
            IDENTITY_KEY: identity.to_metadata(),
            "history": thin_history(result.history),
        },
    )
    figure = history_figure(bundle.metadata, f"pretrain ({params.model.preset})")
    return bundle, summary, figure


def _pretrained_as_is(
    params: PretrainParams, tokenizer: Any, identity: ModelIdentity, resolved: dict[str, Any]
) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.models.presets import build_causal_lm

    if not params.model.name_or_path:
        raise ValueError("source: pretrained needs pretrain.model.name_or_path to be set")
    model = build_causal_lm(params.model, tokenizer)
    _check_fits_tokenizer(model, tokenizer, params.model.name_or_path)
    summary = {"origin": "pretrained", "name_or_path": params.model.name_or_path}
    bundle = ModelBundle(
        model,
        tokenizer,
        {
            "family": FAMILY,
            "training": summary,
            "model_config": asdict(params.model),
            IDENTITY_KEY: identity.to_metadata(),
        },
    )
    return bundle, summary, history_figure(bundle.metadata, "pretrain (pretrained)"), resolved


def _check_fits_tokenizer(model: Any, tokenizer: Any, what: str) -> None:
    problems = tokenizer_problems(model, tokenizer)
    if problems:
        raise ValueError(
            f"pretrain.model ({what}) does not fit the data's tokenizer (data.tokenizer): "
            + "; ".join(problems)
            + ". Use the model's own tokenizer (data.tokenizer.name_or_path = the model) or set "
            "pretrain.model.resize_token_embeddings: true to train it on the new vocabulary"
        )


def _run_lr_finder(model: Any, train_set: Any, params: PretrainParams) -> None:
    from router_pipelines.tracking import log_figure
    from router_pipelines.training import causal_lm_loss, find_lr, plot_lr_finder

    finder = find_lr(
        model,
        causal_lm_loss,
        train_set,
        params.training,
        start_lr=params.lr_finder.start_lr,
        end_lr=params.lr_finder.end_lr,
        num_steps=params.lr_finder.num_steps,
    )
    logger.info("LR finder suggests %.3g", finder.suggestion)
    log_figure(plot_lr_finder(finder), "lr_finder.png", {"lr_finder_suggestion": finder.suggestion})
    if params.lr_finder.use_suggestion and finder.suggestion is not None:
        params.training.learning_rate = float(finder.suggestion)


def register_base_model(
    model: Any, training_summary: dict[str, Any], register_params: dict[str, Any]
) -> dict[str, Any]:
    """Register a base model trained in this run as a new version (``base_lm`` by default).

    A reused model is not registered again; under ``accelerate launch`` only the main process
    registers (it holds the MLflow run).
    """
    config = parse_pretrain_params({"register": register_params}).register
    skipped = registration_skipped(config, training_summary)
    if skipped is not None:
        return skipped
    from router_pipelines.serving import register_model

    headline = headline_metrics(training_summary)
    tags = {
        k: v
        for k, v in training_summary.items()
        if v is not None and k != "fingerprint" and k not in headline
    }
    tags[FINGERPRINT_TAG] = training_summary["fingerprint"]
    info = register_model(
        model,
        config.name,
        wrapper=FAMILY,
        tags=tags,
        description=config.description,
        metrics=headline,
        step=training_summary.get("global_step"),
        input_example=INPUT_EXAMPLE,
    )
    return {"registered": True, **info, "metrics": headline}


def headline_metrics(training_summary: dict[str, Any]) -> dict[str, float]:
    """The base model's numbers a comparison needs: validation perplexity (the promotion
    metric), bits per byte, token accuracy, and its parameter count (the cost)."""
    keys = (
        "validation_perplexity",
        "validation_bits_per_byte",
        "validation_token_accuracy",
        "parameters",
    )
    return {key: float(training_summary[key]) for key in keys if key in training_summary}


def rescore_base_model(
    bundle: Any, validation_tokens: Any, tokenizer: Any, training_params: dict[str, Any]
) -> dict[str, float]:
    """The headline metrics of a registered base model (the champion, in promotion) on this
    run's validation split, by the same evaluation as a model trained now (same batches)."""
    from router_pipelines.promotion import check_same_tokenizer

    check_same_tokenizer(bundle, tokenizer, "the base model to re-score")
    training = parse_pretrain_params({"training": training_params}).training
    validation = validation_report(
        bundle.model,
        validation_tokens,
        tokenizer,
        training.eval_batch_size or training.batch_size,
        training.eval_max_batches,
    )
    parameters = sum(p.numel() for p in bundle.model.parameters())
    return headline_metrics({**validation, "parameters": parameters})
