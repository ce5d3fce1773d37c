"""Nodes of the ``precision_router`` namespace (seed 000): the multi-precision model, router
training, registration. The evaluation is in :mod:`.evaluation_nodes`."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any

from router_pipelines.model_source import (
    FINGERPRINT_TAG,
    IDENTITY_KEY,
    ModelIdentity,
    fingerprint_of,
)
from router_pipelines.pipelines.common import (
    history_figure,
    registration_skipped,
    thin_history,
    trained_summary,
)

logger = logging.getLogger(__name__)

FAMILY = "precision_router"


def _params(**groups: Any) -> Any:
    from router_pipelines.pipelines.precision_router.config import parse_precision_router_params

    return parse_precision_router_params(groups)


def provide_multi_precision_model(
    switchable_model: Any,
    base_model: Any,
    tokenizer: Any,
    train_tokens: Any,
    quantized_params: dict,
) -> Any:
    """The frozen multi-precision model to route, as ``precision_router.quantized.source`` says:
    the switchable model (``switchable``), a saved multi-precision folder (``path``, the seed's
    ``model_path``) or a post-training quantization of the base LM or a named model (``ptq``)."""
    config = _params(quantized=quantized_params).quantized
    if config.source == "switchable":
        if switchable_model is None:
            raise ValueError(
                "precision_router.quantized.source: 'switchable' needs the switchable model; "
                "this pipeline (precision_router_ptq) only quantizes: set it to ptq"
            )
        return _with_origin(switchable_model, "switchable")
    if config.source == "path":
        return _from_path(config, tokenizer)
    return _post_training_quantized(config, base_model, train_tokens)


def quantize_base_model(
    base_model: Any, tokenizer: Any, train_tokens: Any, quantized_params: dict
) -> Any:
    """:func:`provide_multi_precision_model` without a switchable model (``ptq`` or ``path``)."""
    return provide_multi_precision_model(
        None, base_model, tokenizer, train_tokens, quantized_params
    )


def _with_origin(bundle: Any, origin: str, **extra: Any) -> Any:
    from router_pipelines.models.bundle import ModelBundle

    metadata = {**bundle.metadata, "quantized_source": origin, **extra}
    return ModelBundle(bundle.model, bundle.tokenizer, metadata, bundle.source_dir)


def _from_path(config: Any, tokenizer: Any) -> Any:
    from pathlib import Path

    from router_pipelines.models.bundle import BUNDLE_FILE, ModelBundle, load_bundle
    from router_pipelines.models.switchable import SwitchableLM

    path = Path(config.model_path)
    if (path / BUNDLE_FILE).is_file():
        bundle = load_bundle(path)
        if not isinstance(bundle.model, SwitchableLM):
            raise ValueError(
                f"precision_router.quantized.model_path: {str(path)!r} holds a "
                f"{bundle.family!r} model, not a multi-precision (switchable) one"
            )
        return _with_origin(bundle, "path", quantized_path=str(path))
    model = SwitchableLM.from_pretrained(path)
    return ModelBundle(
        model,
        tokenizer,
        {"family": "switchable", "quantized_source": "path", "quantized_path": str(path)},
    )


def _post_training_quantized(config: Any, base_model: Any, train_tokens: Any) -> Any:
    import torch

    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.model_source import tokenizer_problems
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.models.ptq import load_causal_lm, post_training_quantize

    model = base_model.model
    if config.name_or_path:
        model = load_causal_lm(config.name_or_path, config.trust_remote_code)
        problems = tokenizer_problems(model, base_model.tokenizer)
        if problems:
            raise ValueError(
                f"precision_router.quantized.name_or_path: {config.name_or_path!r} does not fit "
                f"the data's tokenizer: {'; '.join(problems)}"
            )
    rows = TokenBlockDataset(train_tokens)
    count = min(config.calibration_examples, len(rows))
    items = [rows[i] for i in range(count)]
    batch = {
        key: torch.stack([item[key] for item in items]) for key in ("input_ids", "attention_mask")
    }
    quantized = post_training_quantize(model, config.bit_widths, [batch], act_bits=config.act_bits)
    identity = {"ptq": asdict(config), "base": fingerprint_of(base_model.metadata)}
    metadata = {
        "family": "switchable",
        "quantized_source": "ptq",
        IDENTITY_KEY: ModelIdentity(identity).to_metadata(),
    }
    logger.info(
        "Post-training quantized %s at %s bits",
        config.name_or_path or "the base LM",
        config.bit_widths,
    )
    return ModelBundle(quantized, base_model.tokenizer, metadata)


def router_identity(params: Any, quantized: Any, train_tokens: Any) -> ModelIdentity:
    from router_pipelines.training import result_affecting_fields

    return ModelIdentity(
        {
            "family": FAMILY,
            "quantized": fingerprint_of(quantized.metadata)
            or quantized.metadata.get("quantized_source"),
            "router": asdict(params.router),
            "training": result_affecting_fields(params.training),
            "data": train_tokens.fingerprint,
        }
    )


def train_router(
    multi_precision_model: Any,
    train_tokens: Any,
    validation_tokens: Any,
    router_params: dict,
    training_params: dict,
    evaluation_params: dict,
) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """Train only the routers on the frozen multi-precision model (the seed's program).

    Loss ``weight_ce * CE + weight_precision * precision_loss`` (docs/precision_router.md);
    CE, precision loss, average precision and per-layer bits are logged every
    ``logging_steps``; one checkpoint (router only) and one validation per epoch; the best
    router by validation loss is kept and returned.

    Returns:
        The router bundle (router + the multi-precision model it routes), the training
        summary, the loss curve and the seed's ``training_history.json`` document.
    """
    import copy

    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.families.precision_router import make_router_loss
    from router_pipelines.families.precision_router.checkpoints import EpochRouterCheckpoints
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.models.precision_router import LayerwiseQuantizeForCausalLM
    from router_pipelines.pipelines.precision_router.data import row_split, rows_of
    from router_pipelines.tracking import metric_logger
    from router_pipelines.training import Trainer

    params = _params(router=router_params, training=training_params, evaluation=evaluation_params)
    training = params.training
    calibration_examples = params.evaluation.calibration_examples
    rows = len(TokenBlockDataset(train_tokens))
    check_example_counts(training.num_examples, calibration_examples, rows)
    train_rows, _ = row_split(
        rows, training.num_examples, calibration_examples, training.random_state
    )
    quantized = copy.deepcopy(multi_precision_model.model)
    available = sorted(quantized.switchable_config.bit_widths)
    check_precisions(training, available)
    router = LayerwiseQuantizeForCausalLM(quantized, params.router, training.precisions)
    identity = router_identity(params, multi_precision_model, train_tokens)
    logger.info(
        "Router training: %d examples, %d epochs of %d steps, widths %s, %d trainable parameters",
        training.num_examples,
        training.num_epochs,
        training.steps_per_epoch,
        router.precisions,
        sum(p.numel() for p in router.router_parameters()),
    )
    epochs = EpochRouterCheckpoints(router, training.steps_per_epoch)
    trainer = Trainer(
        router,
        make_router_loss(training.loss),
        rows_of(train_tokens, train_rows, training.seq_len),
        rows_of(validation_tokens, None, training.seq_len),
        config=training.engine_config(),
        eval_loss_fn=make_router_loss(training.loss, hard=True),
        log_fn=metric_logger(),
        run_config={key: value for key, value in identity.inputs.items() if key != "training"},
        callbacks=[epochs],
    )
    epochs.directory = trainer.run_dir
    epochs.main_process = trainer.accelerator.is_main_process
    result = trainer.train()
    summary = trained_summary(
        result,
        identity,
        precisions=router.precisions,
        granularity=params.router.granularity,
        quantized_source=multi_precision_model.metadata.get("quantized_source"),
        quantized_fingerprint=fingerprint_of(multi_precision_model.metadata),
        epoch_checkpoints=[str(path) for path in epochs.saved],
    )
    model = result.model.cpu()
    bundle = ModelBundle(
        model=model,
        tokenizer=multi_precision_model.tokenizer,
        metadata={
            "family": FAMILY,
            "training": summary,
            IDENTITY_KEY: identity.to_metadata(),
            "history": thin_history(result.history),
            "quantized": {
                "source": multi_precision_model.metadata.get("quantized_source"),
                "fingerprint": fingerprint_of(multi_precision_model.metadata),
                "path": multi_precision_model.metadata.get("quantized_path")
                or multi_precision_model.source_dir,
            },
        },
    )
    history = training_history(result.history, training.steps_per_epoch)
    return bundle, summary, history_figure(bundle.metadata, "precision router"), history


def check_example_counts(num_examples: int, calibration_examples: int, rows: int) -> None:
    """``num_examples`` training rows plus the calibration rows after them must exist."""
    if num_examples + calibration_examples > rows:
        raise ValueError(
            f"precision_router.training.num_examples: {num_examples} (+ {calibration_examples} "
            f"evaluation.calibration_examples) is larger than the {rows} training rows of the "
            f"data; use at most {max(rows - calibration_examples, 0)} or more data (data.*)"
        )


def check_precisions(training: Any, available: list[int]) -> None:
    """The routed widths and the target against the model's widths."""
    chosen = training.precisions or available
    missing = [b for b in chosen if b not in available]
    if missing:
        raise ValueError(
            f"precision_router.training.precisions: {missing} bits is not a width of the "
            f"multi-precision model; it has {available}"
        )
    if training.target_bits is not None and not chosen[0] <= training.target_bits <= chosen[-1]:
        raise ValueError(
            f"precision_router.training.target_bits: {training.target_bits} is outside the "
            f"routed widths {chosen}; use a value from {chosen[0]} to {chosen[-1]}"
        )


def training_history(history: dict[str, list], steps_per_epoch: int) -> dict[str, Any]:
    """The seed's ``training_history.json``: per-epoch means and the validation results, plus
    every logged step."""
    keys = ("train_loss", "train_ce", "train_precision_loss", "train_avg_precision")
    epochs: dict[int, dict[str, Any]] = {}
    for key, points in history.items():
        for step, value in points:
            epoch = max(1, -(-int(step) // steps_per_epoch))
            entry = epochs.setdefault(epoch, {"epoch": epoch})
            if key.startswith("eval_"):
                entry[key] = value
            elif key in keys:
                entry.setdefault(f"_{key}", []).append(value)
    for entry in epochs.values():
        for key in keys:
            values = entry.pop(f"_{key}", None)
            if values:
                entry[key] = sum(values) / len(values)
    return {
        "epochs": [epochs[e] for e in sorted(epochs)],
        "steps": {key: [list(p) for p in points] for key, points in history.items()},
    }


def register_router(
    model: Any,
    results: dict[str, Any],
    training_summary: dict[str, Any],
    register_params: dict,
    switchable_params: dict,
    switchable_registration: dict | None = None,
) -> dict[str, Any]:
    """Register the router trained in this run as ``precision_router``: its bundle carries the
    multi-precision model, and the version is tagged with the registered version of that model
    (``quantized_model_uri``) when there is one, and the headline metrics.

    ``switchable_registration`` (when the DAG registers the switchable model too) makes this
    node run after that registration, so the version it made is found.
    """
    del switchable_registration  # an ordering input: the registry is searched by fingerprint
    params = _params(register=register_params, switchable=switchable_params)
    config = params.register
    skipped = registration_skipped(config, training_summary)
    if skipped is not None:
        return skipped
    from router_pipelines.pipelines.precision_router.evaluation_nodes import headline_metrics
    from router_pipelines.serving import register_model

    headline = headline_metrics(results)
    reference = quantized_reference(
        model.metadata.get("quantized", {}).get("fingerprint"),
        params.switchable.registry_name or "switchable_lm",
    )
    tags = {
        FINGERPRINT_TAG: training_summary["fingerprint"],
        "precisions": json.dumps(training_summary["precisions"]),
        "granularity": training_summary["granularity"],
        "quantized_source": str(training_summary.get("quantized_source")),
        "quantized_model_uri": reference or "not registered",
        "quantized_fingerprint": str(model.metadata.get("quantized", {}).get("fingerprint")),
        "quantized_path": str(model.metadata.get("quantized", {}).get("path")),
    }  # register_model adds the headline metrics as tags too
    info = register_model(
        model,
        config.name,
        wrapper=FAMILY,
        tags=tags,
        description=config.description,
        metrics=headline,
        step=training_summary.get("global_step"),
    )
    return {"registered": True, **info, "metrics": headline, "quantized_model_uri": reference}


def quantized_reference(fingerprint: str | None, name: str = "switchable_lm") -> str | None:
    """``models:/switchable_lm/<v>`` of the registered version with this fingerprint, if any."""
    if not fingerprint:
        return None
    import mlflow

    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no registry, or no such model: no reference
        return None
    matches = [v for v in versions if v.tags.get(FINGERPRINT_TAG) == fingerprint]
    if not matches:
        return None
    return f"models:/{name}/{max(int(v.version) for v in matches)}"
