"""Nodes of the ``pretrain`` pipeline: build and train the base LM, then register it."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import pandas as pd

from router_pipelines.config import config_from_dict
from router_pipelines.data.torch_dataset import TokenBlockDataset
from router_pipelines.hooks import is_main_process
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.presets import ModelConfig, build_causal_lm
from router_pipelines.tracking import loss_curve_figure, metric_logger, register_bundle
from router_pipelines.training import Trainer, TrainingConfig, causal_lm_loss, find_lr

logger = logging.getLogger(__name__)


@dataclass
class LRFinderConfig:
    """The learning-rate range test run before training (off by default)."""

    enabled: bool = False
    start_lr: float = 1e-7
    end_lr: float = 1.0
    num_steps: int = 100
    use_suggestion: bool = False  # train with the suggested lr instead of training.learning_rate


@dataclass
class RegisterConfig:
    enabled: bool = True
    name: str = "base_lm"  # MLflow Model Registry name


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(output_dir="data/06_models/checkpoints/pretrain")
    )
    lr_finder: LRFinderConfig = field(default_factory=LRFinderConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)


def train_base_model(
    train_tokens: pd.DataFrame,
    validation_tokens: pd.DataFrame,
    tokenizer: Any,
    pretrain_params: dict[str, Any],
) -> tuple[ModelBundle, dict[str, Any], Any, dict[str, Any]]:
    """Build the base causal LM from its preset (or hub/local weights) and train it.

    Returns:
        The trained model with its tokenizer, a summary of the run (numbers only), the loss-curve
        figure and the resolved configuration (logged to MLflow by the catalog).
    """
    config = config_from_dict(PretrainConfig, pretrain_params, "pretrain")
    model = build_causal_lm(config.model, tokenizer, seed=config.training.seed)
    train_set, eval_set = TokenBlockDataset(train_tokens), TokenBlockDataset(validation_tokens)
    log_fn = metric_logger()
    if config.lr_finder.enabled:
        config = _run_lr_finder(model, train_set, config)
    trainer = Trainer(
        model,
        causal_lm_loss,
        train_set,
        eval_set,
        config=config.training,
        log_fn=log_fn,
    )
    result = trainer.train()
    n_params = sum(p.numel() for p in result.model.parameters())
    summary = {
        "parameters": n_params,
        "global_step": result.global_step,
        "tokens_seen": result.tokens_seen,
        "train_loss": result.train_loss,
        "best_eval_loss": result.best_eval_loss,
        "best_step": result.best_step,
        "stopped_early": result.stopped_early,
        "seconds": round(result.seconds, 2),
        "tokens_per_s": round(result.tokens_seen / max(result.seconds, 1e-9), 1),
    }
    logger.info("Base model trained: %s", summary)
    bundle = ModelBundle(
        model=result.model.cpu(),
        tokenizer=tokenizer,
        metadata={"family": "causal_lm", "training": summary, "model_config": asdict(config.model)},
    )
    figure = loss_curve_figure(result.history, f"pretrain ({config.model.preset})")
    return bundle, summary, figure, asdict(config)


def _run_lr_finder(model: Any, train_set: Any, config: PretrainConfig) -> PretrainConfig:
    from router_pipelines.tracking import log_figure
    from router_pipelines.training.lr_finder import plot_lr_finder

    finder = find_lr(
        model,
        causal_lm_loss,
        train_set,
        config.training,
        start_lr=config.lr_finder.start_lr,
        end_lr=config.lr_finder.end_lr,
        num_steps=config.lr_finder.num_steps,
    )
    logger.info("LR finder suggests %.3g", finder.suggestion)
    log_figure(plot_lr_finder(finder), "lr_finder.png", {"lr_finder_suggestion": finder.suggestion})
    if config.lr_finder.use_suggestion:
        config.training.learning_rate = float(finder.suggestion)
    return config


def register_base_model(
    base_model: ModelBundle, pretrain_summary: dict[str, Any], pretrain_params: dict[str, Any]
) -> dict[str, Any]:
    """Register the saved base model in the MLflow Model Registry (a new version per run).

    Under ``accelerate launch`` only the main process registers (it holds the MLflow run).
    """
    config = config_from_dict(PretrainConfig, pretrain_params, "pretrain")
    if not is_main_process():
        return {"registered": False, "reason": "not the main process"}
    if not config.register.enabled:
        return {"registered": False}
    tags = {k: v for k, v in pretrain_summary.items() if v is not None}
    return {"registered": True, **register_bundle(base_model, config.register.name, tags=tags)}
