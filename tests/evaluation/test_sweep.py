"""evaluate_settings on a plain GPT-2 with toy settings: evaluation/ works without any family."""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import VOCAB_SIZE
from torch import nn

from router_pipelines.config import config_from_dict
from router_pipelines.evaluation import (
    ModelAsIs,
    Setting,
    SpeedConfig,
    SweepConfig,
    TimedModel,
    evaluate_language_model,
    evaluate_settings,
)

FAST = SpeedConfig(decode_tokens=4, prefill_seq_len=8, warmup=0, iters=1)
NO_SPEED = SpeedConfig(enabled=False)


@dataclass
class ScaledLogits:
    """A toy family's setting: the LM head's logits times ``scale`` (0: uniform predictions).

    It counts how often it was entered, so tests can tell whether evaluation started.
    """

    name: str
    scale: float
    kind: str = "scale"
    entered: list = field(default_factory=list)

    def validate(self, model: nn.Module) -> None:
        if self.scale < 0:
            raise ValueError(f"scale: must be >= 0, got {self.scale}")

    @contextlib.contextmanager
    def applied(self, model: nn.Module):
        self.entered.append(self.name)
        handle = model.lm_head.register_forward_hook(lambda m, i, out: out * self.scale)
        try:
            yield
        finally:
            handle.remove()

    def columns(self, model: nn.Module) -> dict:
        return {"scale": self.scale, "compute_fraction": 1.0}


@dataclass
class PackedLike(ScaledLogits):
    """A setting that is timed on another model (as a family's packed copy would be)."""

    timed: list = field(default_factory=list)

    def timed_model(self, model: nn.Module) -> TimedModel:
        copied = copy.deepcopy(model).to(torch.float64)
        self.timed.append(copied)
        return TimedModel(copied, "toy_kernel", "float64")


def test_toy_settings_are_settings():
    assert isinstance(ScaledLogits("x", 1.0), Setting)
    assert isinstance(ModelAsIs(), Setting)
    assert not isinstance(object(), Setting)


def test_one_row_per_setting_with_the_common_metrics(plain_gpt2, lm_dataset):
    model = plain_gpt2
    settings = [ScaledLogits("unit", 1.0), ModelAsIs("as_is"), ScaledLogits("flat", 0.0)]
    token_bytes = np.full(VOCAB_SIZE, 4)
    expected = evaluate_language_model(model, lm_dataset, batch_size=2, token_bytes=token_bytes)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    config = SweepConfig(batch_size=2, speed=FAST)
    df = evaluate_settings(model, settings, lm_dataset, config, token_bytes=token_bytes)

    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == [
        "name",
        "kind",
        "loss",
        "perplexity",
        "bits_per_byte",
        "token_accuracy",
        "eval_tokens",
        "tokens_per_s",
        "prefill_tokens_per_s",
        "speed_kind",
        "speed_dtype",
        "scale",
        "compute_fraction",
    ]  # the settings' own columns last, whichever setting comes first
    assert list(df["name"]) == ["unit", "as_is", "flat"]
    assert list(df["kind"]) == ["scale", "as_is", "scale"]
    for name in ("as_is", "unit"):  # scaling by 1 changes nothing
        row = df.set_index("name").loc[name]
        assert row["loss"] == pytest.approx(expected["loss"], rel=1e-6)
        assert row["bits_per_byte"] == pytest.approx(expected["bits_per_byte"], rel=1e-6)
        assert row["eval_tokens"] == expected["tokens"] == 4 * 15
    flat = df.set_index("name").loc["flat"]
    assert flat["loss"] == pytest.approx(math.log(VOCAB_SIZE))  # uniform over 128 tokens
    assert flat["bits_per_byte"] == pytest.approx(7 / 4)  # log2(128) bits / 4 bytes per token
    assert math.isnan(df.loc[1, "scale"]) and df.loc[2, "scale"] == 0.0
    assert list(df["speed_kind"]) == ["native"] * 3
    assert list(df["speed_dtype"]) == ["float32"] * 3
    assert (df["tokens_per_s"] > 0).all() and (df["prefill_tokens_per_s"] > 0).all()
    # the model is left as it was: no hook, same weights, same mode
    assert not model.lm_head._forward_hooks and not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_setting_may_be_timed_on_another_model(plain_gpt2, lm_dataset):
    setting = PackedLike("packed", 1.0)
    df = evaluate_settings(plain_gpt2, [setting], lm_dataset, SweepConfig(speed=FAST))
    assert df.loc[0, "speed_kind"] == "toy_kernel" and df.loc[0, "speed_dtype"] == "float64"
    assert len(setting.timed) == 1 and setting.timed[0] is not plain_gpt2


def test_a_setting_names_its_speed_kind(plain_gpt2, lm_dataset):
    setting = ScaledLogits("emulated", 1.0)
    setting.speed_kind = "simulated"
    df = evaluate_settings(plain_gpt2, [setting], lm_dataset, SweepConfig(speed=FAST))
    assert df.loc[0, "speed_kind"] == "simulated"


def test_speed_off_gives_nan_and_not_measured(plain_gpt2, lm_dataset):
    config = SweepConfig(batch_size=2, max_batches=1, speed=NO_SPEED)
    df = evaluate_settings(plain_gpt2, [ModelAsIs()], lm_dataset, config)
    assert df.loc[0, "speed_kind"] == "not_measured" and df.loc[0, "speed_dtype"] == ""
    assert math.isnan(df.loc[0, "tokens_per_s"]) and math.isnan(df.loc[0, "bits_per_byte"])
    assert df.loc[0, "eval_tokens"] == 2 * 15


def test_every_setting_is_validated_before_the_first_is_evaluated(plain_gpt2, lm_dataset):
    first, bad = ScaledLogits("first", 1.0), ScaledLogits("bad", -1.0)
    with pytest.raises(ValueError, match=r"settings\['bad'\]: scale: must be >= 0"):
        evaluate_settings(plain_gpt2, [first, bad], lm_dataset, SweepConfig(speed=NO_SPEED))
    assert first.entered == []


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ([], ValueError, "settings: expected a non-empty list"),
        (ModelAsIs(), ValueError, "settings: expected a non-empty list"),
        ([ModelAsIs("a"), ModelAsIs("a")], ValueError, r"names \['a'\] appear more than once"),
        ([ModelAsIs(), "uniform_4bit"], TypeError, r"settings\[1\]: str is not a Setting"),
        ([ModelAsIs("")], ValueError, r"settings\[0\]: name must be a non-empty string"),
    ],
)
def test_bad_settings_are_named(plain_gpt2, lm_dataset, settings, error, message):
    with pytest.raises(error, match=message):
        evaluate_settings(plain_gpt2, settings, lm_dataset, SweepConfig(speed=NO_SPEED))


def test_bad_token_bytes_and_speed_lengths_fail_before_any_work(plain_gpt2, lm_dataset):
    setting = ScaledLogits("s", 1.0)
    config = SweepConfig(speed=NO_SPEED)
    with pytest.raises(ValueError, match="token_bytes: expected a non-empty 1-D integer"):
        evaluate_settings(plain_gpt2, [setting], lm_dataset, config, token_bytes=[[1, 2]])
    too_long = SweepConfig(speed=SpeedConfig(prefill_seq_len=65))
    with pytest.raises(ValueError, match="speed.prefill_seq_len: 65 exceeds the model's 64"):
        evaluate_settings(plain_gpt2, [setting], lm_dataset, too_long)
    assert setting.entered == []
    with pytest.raises(TypeError, match="config: expected a SweepConfig"):
        evaluate_settings(plain_gpt2, [setting], lm_dataset, {"batch_size": 2})


def test_a_setting_column_may_not_shadow_a_metric(plain_gpt2, lm_dataset):
    @dataclass
    class Shadowing(ScaledLogits):
        def columns(self, model):
            return {"loss": 0.0}

    with pytest.raises(ValueError, match=r"settings\['s'\]: columns \['loss'\] are the sweep's"):
        evaluate_settings(
            plain_gpt2, [Shadowing("s", 1.0)], lm_dataset, SweepConfig(speed=NO_SPEED)
        )
    assert not plain_gpt2.lm_head._forward_hooks  # restored although the row was refused


# --- a family's sweep config extends the generic one ---------------------------------------


@dataclass
class KernelSpeedConfig(SpeedConfig):
    kernel: str = "native"


@dataclass
class CapacitySweepConfig(SweepConfig):
    speed: KernelSpeedConfig = field(default_factory=KernelSpeedConfig)
    capacities: list[float] = field(default_factory=lambda: [0.5, 1.0])


def test_a_family_config_inherits_the_sweep_fields():
    config = config_from_dict(
        CapacitySweepConfig,
        {"batch_size": 4, "capacities": [0.25], "speed": {"iters": 1, "kernel": "x"}},
        "family.evaluation",
    )
    assert (config.batch_size, config.max_batches, config.capacities) == (4, None, [0.25])
    assert isinstance(config.speed, KernelSpeedConfig) and config.speed.kernel == "x"
    assert isinstance(CapacitySweepConfig(speed={"iters": 2}).speed, KernelSpeedConfig)
    with pytest.raises(ValueError, match="family.evaluation.batch_size: must be an integer >= 1"):
        config_from_dict(CapacitySweepConfig, {"batch_size": 0}, "family.evaluation")
    with pytest.raises(ValueError, match=r"family.evaluation.speed: unknown key 'iterz'"):
        config_from_dict(CapacitySweepConfig, {"speed": {"iterz": 1}}, "family.evaluation")
    with pytest.raises(ValueError, match="speed: expected a KernelSpeedConfig"):
        CapacitySweepConfig(speed=SpeedConfig())


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"max_batches": 0}, "max_batches: must be an integer >= 1"),
        ({"speed": {"enabled": "yes"}}, "speed.enabled: expected true or false"),
        ({"speed": {"warmup": -1}}, "speed.warmup: must be an integer >= 0"),
        ({"speed": {"decode_tokens": 0}}, "speed.decode_tokens: must be an integer >= 1"),
    ],
)
def test_bad_sweep_config_values_are_named(values, message):
    with pytest.raises(ValueError, match=rf"evaluation.{message}"):
        config_from_dict(SweepConfig, values, "evaluation")


def test_evaluation_imports_no_family_and_no_model_code():
    """The layer rule: families bring their settings as objects; evaluation/ names none."""
    import ast
    from pathlib import Path

    import router_pipelines.evaluation as evaluation

    imported = set()
    for path in Path(evaluation.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add((path.name, node.module))
            elif isinstance(node, ast.Import):
                imported.update((path.name, alias.name) for alias in node.names)
    assert any(module == "router_pipelines.evaluation.settings" for _, module in imported)
    forbidden = (
        "router_pipelines.families",
        "router_pipelines.models",
        "router_pipelines.training",
    )
    offending = sorted((f, m) for f, m in imported if m.startswith(forbidden))
    assert offending == []
