"""Nodes of the ``switchable`` namespace (seed 001): train, evaluate bit configurations, register."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from router_pipelines.model_source import (
    FINGERPRINT_TAG,
    IDENTITY_KEY,
    ModelIdentity,
    decide_source,
    fingerprint_of,
)
from router_pipelines.pipelines.common import (
    history_figure,
    registration_skipped,
    reused_summary,
    thin_history,
    trained_summary,
)

if TYPE_CHECKING:  # the family's configs import torch: only the nodes that run load them
    from router_pipelines.pipelines.switchable.config import SwitchableParams

logger = logging.getLogger(__name__)

FAMILY = "switchable"
# Saved with every registered version (MLflow runs the model on it once when logging it).
INPUT_EXAMPLE = ["def add(a, b):"]


def switchable_identity(
    params: SwitchableParams, base_model: Any, train_tokens: Any
) -> ModelIdentity:
    """What determines the trained switchable model: its settings, its base model, the data."""
    from router_pipelines.training import result_affecting_fields

    return ModelIdentity(
        {
            "family": FAMILY,
            "base": fingerprint_of(base_model.metadata) or _weights_digest(base_model.model),
            "model": asdict(params.model),
            "quantization": asdict(params.quantization),
            "training": result_affecting_fields(params.training),
            "data": train_tokens.fingerprint,
        }
    )


def train_switchable(
    base_model: Any,
    train_tokens: Any,
    validation_tokens: Any,
    saved_models: Any,
    model_registry: Any,
    model_params: dict[str, Any],
    quantization_params: dict[str, Any],
    training_params: dict[str, Any],
    register_params: dict[str, Any],
    source_params: dict[str, Any] | None = None,
    *,
    source_key: str = "switchable.source",
) -> tuple[Any, dict[str, Any], Any]:
    """Quantization-aware training of one model that runs at every width in ``bit_widths``.

    The student is a copy of the base model with its linear layers swapped for switchable
    quantized ones; the unchanged base model is the frozen full-precision teacher. With
    ``source_params`` (a router's pipeline that needs this model) a compatible saved or
    registered switchable model is reused instead, see :mod:`router_pipelines.model_source`.

    Returns:
        The switchable model (with tokenizer), a training summary (steps per width, losses) and
        the loss-curve figure.
    """
    from router_pipelines.pipelines.switchable.config import parse_switchable_params

    params = parse_switchable_params(
        {
            "model": model_params,
            "quantization": quantization_params,
            "training": training_params,
            "experiment": {"register": register_params},
        }
    )
    identity = switchable_identity(params, base_model, train_tokens)
    decision = decide_source(
        source_params,
        source_key,
        identity,
        saved_models,
        model_registry,
        registry_name=params.experiment.register.name,
    )
    if decision.reused:
        return decision.bundle, reused_summary(decision), history_figure(decision.metadata, FAMILY)
    if decision.origin == "pretrained":
        raise ValueError(f"{source_key}.source: 'pretrained' is not a source of switchable models")
    return _train(params, identity, base_model, train_tokens, validation_tokens)


def _train(
    params: SwitchableParams,
    identity: ModelIdentity,
    base_model: Any,
    train_tokens: Any,
    validation_tokens: Any,
) -> tuple[Any, dict[str, Any], Any]:
    import copy

    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.families.switchable import (
        lr_multiplier_fn,
        make_eval_loss,
        make_switchable_loss,
        width_step_counts,
    )
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.models.layers import keep_first_layers
    from router_pipelines.models.switchable import SwitchableLM
    from router_pipelines.tracking import log_metrics, metric_logger
    from router_pipelines.training import Trainer

    teacher = base_model.model
    check_fits(teacher, params)  # before the copy and any training
    student_base = copy.deepcopy(teacher)
    student_base.requires_grad_(True)  # the teacher gets frozen below; its copy must train
    if params.model.n_layer is not None:
        _named_layers(lambda: keep_first_layers(student_base, params.model.n_layer))
    student = SwitchableLM.from_base(student_base, params.switchable)
    switching = params.switching
    lr_multipliers = params.training.lr_multipliers
    trainer = Trainer(
        student,
        make_switchable_loss(teacher, switching, params.distill),
        TokenBlockDataset(train_tokens),
        TokenBlockDataset(validation_tokens),
        config=params.training,
        eval_loss_fn=make_eval_loss(params.eval_bits),
        log_fn=metric_logger(),
        lr_multiplier_fn=lr_multiplier_fn(switching, lr_multipliers) if lr_multipliers else None,
        run_config={key: value for key, value in identity.inputs.items() if key != "training"},
    )
    result = trainer.train()
    steps_per_width = {
        _width_name(width): count
        for width, count in width_step_counts(switching, result.global_step).items()
    }
    summary = trained_summary(
        result,
        identity,
        strategy=switching.strategy,
        bit_widths=list(params.model.bit_widths),
        steps_per_width=steps_per_width,
        eval_bits=_width_name(params.eval_bits),
    )
    logger.info("Switchable model trained: %s", summary)
    log_metrics({f"steps_{name}": n for name, n in steps_per_width.items()})
    model = result.model.cpu()
    model.set_precision(None)
    bundle = ModelBundle(
        model=model,
        tokenizer=base_model.tokenizer,
        metadata={
            "family": FAMILY,
            "training": summary,
            IDENTITY_KEY: identity.to_metadata(),
            "history": thin_history(result.history),
        },
    )
    return bundle, summary, history_figure(bundle.metadata, f"switchable ({switching.strategy})")


def check_fits(model: Any, params: SwitchableParams) -> None:
    """``check_tied_flags`` with the error naming the ``switchable.model`` group (works on a
    weightless ``meta``-device model, so the validation hook calls it before any training)."""
    from router_pipelines.models.switchable import check_tied_flags

    try:
        check_tied_flags(model, params.switchable)
    except ValueError as err:
        raise ValueError(f"switchable.model: {err}") from None


def _named_layers(action: Any) -> None:
    try:
        action()
    except ValueError as err:
        raise ValueError(f"switchable.model.{err}") from None


def _width_name(width: Any) -> str:
    return "fp" if width in (None, "fp") else f"{int(width)}bit"


def _weights_digest(model: Any) -> str:
    """sha256 of a model's weights (for a base model that records no identity of its own)."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def register_switchable(
    model: Any,
    pareto: Any,
    training_summary: dict[str, Any],
    register_params: dict[str, Any],
    evaluation: Any = None,
) -> dict[str, Any]:
    """Register a switchable model trained in this run as ``switchable_lm`` with its Pareto
    configurations and headline metrics (a reused one is not registered twice)."""
    import tempfile
    from pathlib import Path

    from router_pipelines.pipelines.switchable.config import parse_switchable_params
    from router_pipelines.serving import register_model

    params = parse_switchable_params({"experiment": {"register": register_params}})
    config = params.experiment.register
    skipped = registration_skipped(config, training_summary)
    if skipped is not None:
        return skipped
    from router_pipelines.pipelines.switchable.evaluation_nodes import headline_metrics

    headline = headline_metrics(evaluation) if evaluation is not None else {}
    front_names = [str(n) for n in pareto["name"]]
    tags = {
        "strategy": training_summary["strategy"],
        "bit_widths": json.dumps(training_summary["bit_widths"]),
        "pareto_configurations": ",".join(front_names)[:4000],
        FINGERPRINT_TAG: training_summary["fingerprint"],
    }
    with tempfile.TemporaryDirectory(prefix="pareto-") as tmp:
        table = Path(tmp) / "pareto_configurations.json"
        table.write_text(pareto.to_json(orient="records", indent=2))
        info = register_model(
            model,
            config.name,
            wrapper=FAMILY,
            tags=tags,
            description=config.description,
            extra_artifacts={"pareto_configurations": str(table)},
            metrics=headline,
            step=training_summary.get("global_step"),
            input_example=INPUT_EXAMPLE,
        )
    return {"registered": True, "pareto_configurations": front_names, **info, "metrics": headline}
