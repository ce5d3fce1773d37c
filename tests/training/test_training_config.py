"""TrainingConfig: defaults, construction from params, and field-naming errors."""

from __future__ import annotations

import pytest

from router_pipelines.config import config_from_dict
from router_pipelines.training import TrainingConfig


def test_defaults_and_params_dict():
    config = config_from_dict(
        TrainingConfig,
        {"output_dir": "out", "adam_betas": [0.9, 0.99], "warmup_ratio": 0.1, "max_steps": 50},
        "pretrain.training",
    )
    assert config.adam_betas == (0.9, 0.99)
    assert config.num_warmup_steps == 5
    assert config.scheduler == "cosine" and config.mixed_precision == "auto"
    assert TrainingConfig(output_dir="o", warmup_steps=7).num_warmup_steps == 7


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"max_steps": 0}, "max_steps"),
        ({"batch_size": "8"}, "batch_size"),
        ({"gradient_accumulation_steps": True}, "gradient_accumulation_steps"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": "3e-4"}, "learning_rate"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"adam_betas": [0.9]}, "adam_betas"),
        ({"adam_betas": [0.9, 1.0]}, "adam_betas"),
        ({"scheduler": "step"}, "scheduler"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"warmup_steps": 3, "warmup_ratio": 0.1}, "warmup_steps"),
        ({"warmup_steps": 500}, "warmup_steps"),
        ({"warmup_ratio": 1.5}, "warmup_ratio"),
        ({"max_grad_norm": 0}, "max_grad_norm"),
        ({"eval_steps": 0}, "eval_steps"),
        ({"save_total_limit": 0}, "save_total_limit"),
        ({"early_stopping": True, "eval_steps": None}, "early_stopping"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"early_stopping_threshold": -1}, "early_stopping_threshold"),
        ({"load_best_model_at_end": True, "save_best_model": False}, "load_best_model_at_end"),
        ({"cpu": "yes"}, "cpu"),
        ({"resume_from_checkpoint": ""}, "resume_from_checkpoint"),
        ({"param_groups": [{"pattern": "("}]}, "param_groups"),
        ({"param_groups": [{"pattern": "wte"}]}, "param_groups"),
        ({"param_groups": [{"pattern": "wte", "lr": 1e-3, "lr_multiplier": 2}]}, "param_groups"),
        ({"param_groups": [{"pattern": "wte", "lr": 0}]}, "param_groups"),
        ({"param_groups": [{"pattern": "wte", "lr": 1e-3, "decay": 0}]}, "param_groups"),
        ({"output_dir": ""}, "output_dir"),
        ({"run_name": "a/b"}, "run_name"),
        ({"metric_for_best_model": ""}, "metric_for_best_model"),
        ({"greater_is_better": "yes"}, "greater_is_better"),
        ({"frozen_modules_eval": 1}, "frozen_modules_eval"),
        ({"save_only_trainable": "no"}, "save_only_trainable"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    params = {"output_dir": "out", **overrides}
    with pytest.raises(ValueError) as err:
        config_from_dict(TrainingConfig, params, "pretrain.training")
    assert str(err.value).startswith(f"pretrain.training.{field}"), str(err.value)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match=r"pretrain\.training: unknown key 'lr'"):
        config_from_dict(TrainingConfig, {"output_dir": "o", "lr": 1}, "pretrain.training")
