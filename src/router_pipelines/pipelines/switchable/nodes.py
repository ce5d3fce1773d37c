"""Nodes of the ``switchable`` pipeline: base model, switchable training (seed 001)."""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from typing import Any

import pandas as pd
import torch

from router_pipelines.config import config_from_dict
from router_pipelines.data.torch_dataset import TokenBlockDataset
from router_pipelines.families.switchable import (
    lr_multiplier_fn,
    make_eval_loss,
    make_switchable_loss,
    width_step_counts,
)
from router_pipelines.hooks import is_main_process, world_size
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.switchable import SwitchableLM, check_tied_flags
from router_pipelines.pipelines.pretrain.nodes import PretrainConfig, train_base_model
from router_pipelines.pipelines.switchable.config import SwitchableParams, parse_switchable_params
from router_pipelines.tracking import (
    log_metrics,
    loss_curve_figure,
    metric_logger,
    register_bundle,
)
from router_pipelines.training import Trainer

logger = logging.getLogger(__name__)


def provide_base_model(
    train_tokens: pd.DataFrame,
    validation_tokens: pd.DataFrame,
    tokenizer: Any,
    latest_base_model: ModelBundle | None,
    pretrain_params: dict[str, Any],
    switchable_params: dict[str, Any],
) -> ModelBundle:
    """The full-precision base model: reused when a compatible one exists, else trained.

    ``switchable.base.source`` chooses (see :class:`BaseSourceConfig`). A reused model is
    returned as loaded, so the versioned ``base_model`` dataset writes no duplicate; a freshly
    trained one is saved as a new version and registered as ``base_lm`` like ``pretrain`` does.
    """
    params = parse_switchable_params(switchable_params)  # fail fast, before any training
    pretrain = config_from_dict(PretrainConfig, pretrain_params, "pretrain")
    source = params.base.source
    if source in ("auto", "catalog") and latest_base_model is not None:
        problem = _incompatibility(latest_base_model, tokenizer, pretrain)
        if problem is None:
            logger.info("Reusing the saved base model %s", latest_base_model.source_dir)
            return latest_base_model
        if source == "catalog":
            raise ValueError(f"switchable.base.source=catalog: the saved base model {problem}")
        logger.info("Saved base model not reused: it %s; training a new one", problem)
    elif source == "catalog":
        raise ValueError(
            "switchable.base.source=catalog: no saved base model; run "
            "`kedro run --pipeline=pretrain` first or use source: auto"
        )
    if source == "registry":
        return _from_registry(params)
    # One process only: off rank 0 MLflow is not configured, and a lookup there could race
    # rank 0 creating a fresh store or see another registry, so ranks could choose differently.
    if source == "auto" and world_size() == 1:
        registered = _registered_if_any(params)
        problem = None if registered is None else _incompatibility(registered, tokenizer, pretrain)
        if registered is not None and problem is None:
            logger.info("Reusing the registered base model %s", _registry_uri(params))
            return registered
        if registered is not None:
            logger.info("Registered base model not reused: it %s; training a new one", problem)
    if source == "pretrained":
        if not pretrain.model.name_or_path:
            raise ValueError(
                "switchable.base.source=pretrained needs pretrain.model.name_or_path to be set"
            )
        from router_pipelines.models.presets import build_causal_lm

        model = build_causal_lm(pretrain.model, tokenizer)
        return ModelBundle(
            model, tokenizer, {"family": "causal_lm", "model_config": asdict(pretrain.model)}
        )
    if not pretrain.model.name_or_path:  # a preset: its layout is known before training it
        _check_preset_fits(pretrain, tokenizer, params)
    bundle, summary, _, _ = train_base_model(
        train_tokens, validation_tokens, tokenizer, pretrain_params
    )
    if pretrain.register.enabled and is_main_process():  # the main process holds the MLflow run
        register_bundle(bundle, pretrain.register.name, tags=summary)
    return bundle


def _check_preset_fits(pretrain: PretrainConfig, tokenizer: Any, params: SwitchableParams) -> None:
    """Fail before the base model trains if the switchable flags do not fit its layout (a
    tied LM head and embedding), checked on a weightless ``meta``-device copy."""
    from transformers import AutoModelForCausalLM

    from router_pipelines.models.presets import transformers_config

    hf_config = transformers_config(pretrain.model, len(tokenizer), {})
    with torch.device("meta"):
        _check_fits(AutoModelForCausalLM.from_config(hf_config), params)


def _check_fits(model: Any, params: SwitchableParams) -> None:
    """``check_tied_flags`` with the error naming the ``switchable.model`` group."""
    try:
        check_tied_flags(model, params.switchable)
    except ValueError as err:
        raise ValueError(f"switchable.model: {err}") from None


def _incompatibility(bundle: ModelBundle, tokenizer: Any, pretrain: PretrainConfig) -> str | None:
    if bundle.tokenizer.get_vocab() != tokenizer.get_vocab():
        return "was trained with another tokenizer"
    saved = bundle.metadata.get("model_config")
    if saved is not None and saved != asdict(pretrain.model):
        return f"has model config {saved}, not {asdict(pretrain.model)}"
    return None


def _registry_uri(params: SwitchableParams) -> str:
    name, version = params.base.registry_name, params.base.registry_version
    return f"models:/{name}{version}" if version.startswith("@") else f"models:/{name}/{version}"


def _from_registry(params: SwitchableParams) -> ModelBundle:
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = _registry_uri(params)
    logger.info("Loading the base model from the MLflow registry: %s", uri)
    try:
        bundle = mlflow.pyfunc.load_model(uri).unwrap_python_model().bundle
    except MlflowException as err:
        raise ValueError(
            f"switchable.base.registry_name / registry_version: cannot load {uri} from the "
            f"registry at {mlflow.get_registry_uri()}: {err.message}"
        ) from err
    bundle.source_dir = None  # a copy from the registry: save it as a new catalog version
    return bundle


def _registered_if_any(params: SwitchableParams) -> ModelBundle | None:
    """The registered base model, or ``None`` when no version of ``registry_name`` is
    registered (``source: auto`` then trains one). A version or alias that does not exist
    among registered ones is an error naming the parameter."""
    import mlflow

    name = params.base.registry_name
    if not mlflow.MlflowClient().search_model_versions(f"name = '{name}'", max_results=1):
        return None
    return _from_registry(params)


def train_switchable(
    base_model: ModelBundle,
    train_tokens: pd.DataFrame,
    validation_tokens: pd.DataFrame,
    switchable_params: dict[str, Any],
) -> tuple[ModelBundle, dict[str, Any], Any]:
    """Quantization-aware training of one model that runs at every width in ``bit_widths``.

    The student is a copy of the base model with its linear layers swapped for switchable
    quantized ones; the unchanged base model is the frozen full-precision teacher.

    Returns:
        The switchable model (with tokenizer), a training summary (steps per width, losses) and
        the loss-curve figure.
    """
    params = parse_switchable_params(switchable_params)
    teacher = base_model.model
    _check_fits(teacher, params)  # before the copy and any training
    student_base = copy.deepcopy(teacher)
    student_base.requires_grad_(True)  # the teacher gets frozen below; its copy must train
    if params.model.n_layer is not None:
        _keep_first_layers(student_base, params.model.n_layer)
    student = SwitchableLM.from_base(student_base, params.switchable)
    switching = params.switching
    trainer = Trainer(
        student,
        make_switchable_loss(teacher, switching, params.distill),
        TokenBlockDataset(train_tokens),
        TokenBlockDataset(validation_tokens),
        config=params.engine,
        eval_loss_fn=make_eval_loss(params.eval_bits),
        log_fn=metric_logger(),
        lr_multiplier_fn=(
            lr_multiplier_fn(switching, params.family.lr_multipliers)
            if params.family.lr_multipliers
            else None
        ),
    )
    result = trainer.train()
    steps_per_width = {
        _width_name(width): count
        for width, count in width_step_counts(switching, result.global_step).items()
    }
    summary = {
        "strategy": switching.strategy,
        "bit_widths": list(params.model.bit_widths),
        "steps_per_width": steps_per_width,
        "global_step": result.global_step,
        "tokens_seen": result.tokens_seen,
        "train_loss": result.train_loss,
        "best_eval_loss": result.best_eval_loss,
        "eval_bits": _width_name(params.eval_bits),
        "seconds": round(result.seconds, 2),
    }
    logger.info("Switchable model trained: %s", summary)
    log_metrics({f"steps_{name}": n for name, n in steps_per_width.items()})
    model = result.model.cpu()
    model.set_precision(None)
    bundle = ModelBundle(
        model=model,
        tokenizer=base_model.tokenizer,
        metadata={"family": "switchable", "training": summary},
    )
    figure = loss_curve_figure(result.history, f"switchable ({switching.strategy})")
    return bundle, summary, figure


def _width_name(width: Any) -> str:
    return "fp" if width in (None, "fp") else f"{int(width)}bit"


def _keep_first_layers(model: Any, n_layer: int) -> None:
    """Drop every decoder block after the first ``n_layer`` (GPT-2, Llama, Qwen2 layouts)."""
    import torch

    blocks_owner, attr = (
        (model.transformer, "h") if hasattr(model, "transformer") else (model.model, "layers")
    )
    blocks = getattr(blocks_owner, attr)
    if n_layer > len(blocks):
        raise ValueError(
            f"switchable.model.n_layer: {n_layer} exceeds the base model's {len(blocks)} layers"
        )
    setattr(blocks_owner, attr, torch.nn.ModuleList(list(blocks)[:n_layer]))
    model.config.num_hidden_layers = n_layer
    if hasattr(model.config, "n_layer"):
        model.config.n_layer = n_layer


def register_switchable(
    switchable_model: ModelBundle,
    switchable_pareto: pd.DataFrame,
    switchable_training_summary: dict[str, Any],
    switchable_params: dict[str, Any],
) -> dict[str, Any]:
    """Register the switchable model as ``switchable_lm`` with its Pareto configurations."""
    import json
    import tempfile
    from pathlib import Path

    params = parse_switchable_params(switchable_params)
    if not is_main_process():  # under `accelerate launch`: the main process holds the MLflow run
        return {"registered": False, "reason": "not the main process"}
    if not params.experiment.register.enabled:
        return {"registered": False}
    front_names = [str(n) for n in switchable_pareto["name"]]
    tags = {
        "strategy": switchable_training_summary["strategy"],
        "bit_widths": json.dumps(switchable_training_summary["bit_widths"]),
        "pareto_configurations": ",".join(front_names)[:4000],
    }
    with tempfile.TemporaryDirectory(prefix="pareto-") as tmp:
        table = Path(tmp) / "pareto_configurations.json"
        table.write_text(switchable_pareto.to_json(orient="records", indent=2))
        info = register_bundle(
            switchable_model,
            params.experiment.register.name,
            tags=tags,
            extra_artifacts={"pareto_configurations": str(table)},
        )
    return {"registered": True, "pareto_configurations": front_names, **info}
