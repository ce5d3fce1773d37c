"""The ``pretrain`` parameter group: the base causal LM's model, training, LR finder, registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router_pipelines.config import RegisterConfig, check_bool, check_int, config_from_dict
from router_pipelines.models.presets import ModelConfig
from router_pipelines.training.config import TrainingConfig


@dataclass
class LRFinderConfig:
    """The learning-rate range test run before training (off by default)."""

    enabled: bool = False
    start_lr: float = 1e-7
    end_lr: float = 1.0
    num_steps: int = 100
    use_suggestion: bool = False  # train with the suggested lr instead of training.learning_rate

    def __post_init__(self) -> None:
        check_bool("enabled", self.enabled)
        check_bool("use_suggestion", self.use_suggestion)
        check_int("num_steps", self.num_steps, minimum=2)
        if not 0 < self.start_lr < self.end_lr:
            raise ValueError(
                f"start_lr: need 0 < start_lr < end_lr, got {self.start_lr} and {self.end_lr}"
            )


@dataclass
class PretrainParams:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(output_dir="data/06_models/checkpoints/pretrain")
    )
    lr_finder: LRFinderConfig = field(default_factory=LRFinderConfig)
    register: RegisterConfig = field(default_factory=lambda: RegisterConfig(name="base_lm"))


def parse_pretrain_params(group: dict[str, Any] | None) -> PretrainParams:
    """The whole ``pretrain`` group as typed configs; errors name ``pretrain.<group>.<key>``.

    A missing sub-group takes its defaults, so a node can pass only the sub-groups it reads.
    """
    return config_from_dict(PretrainParams, group, "pretrain")
