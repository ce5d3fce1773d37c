import json
import math

import numpy as np
import pandas as pd
import pytest
from tiny_models import VOCAB_SIZE

from router_pipelines.config import config_from_dict
from router_pipelines.evaluation import Setting, SpeedConfig, SweepConfig, evaluate_settings
from router_pipelines.evaluation.language_modeling import evaluate_language_model
from router_pipelines.families.switchable import (
    BitEvalConfig,
    BitSetting,
    PackedSpeedConfig,
    build_bit_settings,
    build_configurations,
    check_widths,
)

FAST_SPEED = {"decode_tokens": 4, "prefill_seq_len": 8, "warmup": 0, "iters": 1}
MIXED = [{"attn_bits": 8, "mlp_bits": 4}, {"attn_bits": 4, "mlp_bits": "fp"}]
TOKEN_BYTES = np.full(VOCAB_SIZE, 2)  # every token 2 UTF-8 bytes


def test_defaults():
    config = BitEvalConfig()
    assert config.uniform is None  # every trained width, then fp
    assert config.layer_wise == {} and config.random_mixes == 0
    assert isinstance(config.speed, PackedSpeedConfig) and isinstance(config.speed, SpeedConfig)
    assert isinstance(config, SweepConfig)  # batch_size, max_batches, speed are inherited
    assert config.speed.decode_batch_size == 1 and config.speed.packed


def test_from_params_dict_builds_nested_speed_config():
    config = config_from_dict(
        BitEvalConfig,
        {"uniform": [4, "fp"], "layer_wise": {"mixed": MIXED}, "speed": {"iters": 1}},
        "evaluation",
    )
    assert config.speed.iters == 1
    with pytest.raises(ValueError, match="evaluation: unknown key"):
        config_from_dict(BitEvalConfig, {"widths": [4]}, "evaluation")
    with pytest.raises(ValueError, match="evaluation.speed.packed_dtype"):
        config_from_dict(BitEvalConfig, {"speed": {"packed_dtype": "int8"}}, "evaluation")


@pytest.mark.parametrize("width", [1, 9, "four", 4.0, True, None])
def test_unsupported_uniform_width_raises(width):
    with pytest.raises(ValueError, match=rf"uniform: width {width!r} is not allowed"):
        BitEvalConfig(uniform=[width])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"uniform": [4, 4]}, "uniform: widths repeat"),
        ({"layer_wise": {"bad": [{"attn_bits": 9, "mlp_bits": 4}]}}, r"bad\[0\].attn_bits"),
        ({"layer_wise": {"bad": [{"attn_bits": 4}]}}, r"bad\[0\]: expected keys"),
        ({"random_mixes": -1}, "random_mixes"),
        ({"batch_size": 0}, "batch_size"),
        ({"speed": {"enabled": "yes"}}, "enabled"),
        ({"uniform": [], "layer_wise": {}, "random_mixes": 0}, "no configuration"),
    ],
)
def test_bad_eval_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BitEvalConfig(**kwargs)


def test_build_uniform_and_layer_wise():
    config = BitEvalConfig(layer_wise={"mixed": MIXED})
    configurations = build_configurations(config, bit_widths=[2, 4, 8], n_layer=2)
    assert [c.name for c in configurations] == [
        "uniform_2bit",
        "uniform_4bit",
        "uniform_8bit",
        "fp",
        "mixed",
    ]
    assert [c.bits for c in configurations] == [2, 4, 8, None, None]
    assert [c.kind for c in configurations] == ["uniform"] * 4 + ["layer_wise"]
    assert configurations[-1].layer_config == [
        {"attn_bits": 8, "mlp_bits": 4},
        {"attn_bits": 4, "mlp_bits": None},
    ]
    assert (
        json.loads(configurations[1].layer_config_json(2)) == [{"attn_bits": 4, "mlp_bits": 4}] * 2
    )


def test_width_the_model_lacks_raises():
    with pytest.raises(ValueError, match=r"uniform: width 2 is not allowed; choose from \[4, 8\]"):
        build_configurations(BitEvalConfig(uniform=[2]), bit_widths=[8, 4], n_layer=2)
    bad_mix = {"mixed": [{"attn_bits": 8, "mlp_bits": 2}] * 2}
    with pytest.raises(ValueError, match=r"layer_wise.mixed\[0\].mlp_bits: width 2"):
        build_configurations(BitEvalConfig(uniform=[], layer_wise=bad_mix), [4, 8], n_layer=2)


def test_wrong_layer_count_raises_naming_the_config():
    config = BitEvalConfig(layer_wise={"mixed": MIXED})
    with pytest.raises(ValueError, match="layer_wise.mixed: has 2 layer entries; the model has 3"):
        build_configurations(config, bit_widths=[2, 4, 8], n_layer=3)


def test_name_clash_raises():
    config = BitEvalConfig(uniform=["fp"], layer_wise={"fp": MIXED})
    with pytest.raises(ValueError, match="clash"):
        build_configurations(config, bit_widths=[4, 8], n_layer=2)


def test_random_mixes_are_seeded_and_use_model_widths():
    def mixes(seed):
        config = BitEvalConfig(uniform=[], random_mixes=3, seed=seed)
        return build_configurations(config, bit_widths=[2, 4, 8], n_layer=4)

    first = mixes(0)
    assert [c.name for c in first] == ["random_0", "random_1", "random_2"]
    assert all(c.kind == "random" and len(c.layer_config) == 4 for c in first)
    widths = {bits for c in first for layer in c.layer_config for bits in layer.values()}
    assert widths <= {2, 4, 8}
    assert [c.layer_config for c in mixes(0)] == [c.layer_config for c in first]
    assert [c.layer_config for c in mixes(1)] != [c.layer_config for c in first]


def test_applied_sets_the_precision_and_restores_it(tiny_switchable):
    model = tiny_switchable
    model.set_precision(8)
    before = model.precision_map()
    with BitSetting("uniform_4bit", "uniform", None, 4).applied(model):
        assert set(model.precision_map().values()) == {(4, 8)}
    assert model.precision_map() == before
    (mixed,) = build_configurations(
        BitEvalConfig(uniform=[], layer_wise={"m": MIXED}), [2, 4, 8], 2
    )
    with mixed.applied(model):
        precision = model.precision_map()
    assert precision["transformer.h.0.attn.c_attn"] == (8, 8)
    assert precision["transformer.h.0.mlp.c_fc"] == (4, 8)
    assert precision["transformer.h.1.attn.c_proj"] == (4, 8)
    assert precision["transformer.h.1.mlp.c_proj"] == (None, None)
    assert model.precision_map() == before


def test_applied_restores_the_precision_after_an_error(tiny_switchable):
    setting = BitSetting("uniform_2bit", "uniform", None, 2)
    with pytest.raises(RuntimeError, match="boom"), setting.applied(tiny_switchable):
        raise RuntimeError("boom")
    assert set(tiny_switchable.precision_map().values()) == {(None, None)}


def test_a_bit_setting_is_a_sweep_setting():
    setting = BitSetting("uniform_4bit", "uniform", None, 4, "bfloat16")
    assert isinstance(setting, Setting)
    assert BitSetting("fp", "uniform", None, None).speed_kind == "fp"
    assert setting.speed_kind == "simulated"  # unless timed_model packs it


def test_layer_wise_puts_tables_at_its_highest_width(tiny_switchable_tables):
    model = tiny_switchable_tables
    mixes = {
        "low_high": {"attn_bits": 2, "mlp_bits": 4},
        "with_fp": [{"attn_bits": 8, "mlp_bits": 2}, {"attn_bits": "fp", "mlp_bits": 4}],
    }
    configurations = build_configurations(
        BitEvalConfig(uniform=[2], layer_wise=mixes), [2, 4, 8], 2
    )
    by_name = {c.name: c for c in configurations}
    model.set_precision(2)  # what a previous setting could leave; low_high must override it
    with by_name["low_high"].applied(model):
        precision = model.precision_map()
    assert by_name["low_high"].outer_bits == 4
    assert precision["lm_head"] == (4, 8) and precision["transformer.wte"] == (4, None)
    assert precision["transformer.h.1.attn.c_attn"] == (2, 8)
    with by_name["with_fp"].applied(model):
        assert model.precision_map()["transformer.wpe"] == (None, None)


def test_evaluate_configurations_end_to_end(tiny_switchable, lm_dataset):
    config = BitEvalConfig(
        layer_wise={"mixed": MIXED}, batch_size=2, speed=PackedSpeedConfig(**FAST_SPEED)
    )
    settings = build_bit_settings(config, tiny_switchable)
    fp_metrics = evaluate_language_model(tiny_switchable, lm_dataset, batch_size=2)

    df = evaluate_settings(tiny_switchable, settings, lm_dataset, config, token_bytes=TOKEN_BYTES)

    assert isinstance(df, pd.DataFrame)
    assert list(df["name"]) == ["uniform_2bit", "uniform_4bit", "uniform_8bit", "fp", "mixed"]
    for column in (
        "kind",
        "bits",
        "perplexity",
        "bits_per_byte",
        "token_accuracy",
        "loss",
        "effective_bits",
        "compression_ratio_fp16",
        "compression_ratio_fp32",
        "model_compression_fp16",
        "weight_bytes",
        "model_bits_per_param",
        "tokens_per_s",
        "prefill_tokens_per_s",
        "speed_kind",
        "layer_config",
    ):
        assert column in df.columns, column
    assert list(df["speed_kind"]) == ["simulated", "packed_int4", "packed_int8", "fp", "simulated"]
    assert list(df["speed_dtype"]) == ["float32", "bfloat16", "bfloat16", "float32", "float32"]
    # 4 + 16/in per weight at 4 bits (see test_bits); full precision is 16 bits, ratio 1
    assert df.loc[1, "effective_bits"] == pytest.approx(4.1875)
    assert df.loc[3, "effective_bits"] == 16 and df.loc[3, "compression_ratio_fp16"] == 1
    assert df["effective_bits"].iloc[:4].is_monotonic_increasing  # 2 < 4 < 8 bits < fp
    assert df.loc[3, "perplexity"] == pytest.approx(fp_metrics["perplexity"], rel=1e-6)
    assert df.loc[3, "perplexity"] == pytest.approx(math.exp(df.loc[3, "loss"]))
    assert (df["tokens_per_s"] > 0).all() and (df["prefill_tokens_per_s"] > 0).all()
    assert json.loads(df.loc[4, "layer_config"])[1] == {"attn_bits": 4, "mlp_bits": None}
    assert set(tiny_switchable.precision_map().values()) == {(None, None)}  # left at fp
    # every predicted token is 2 bytes here: bits per byte = loss / ln 2 / 2
    assert df["bits_per_byte"].to_numpy() == pytest.approx(df["loss"] / math.log(2) / 2)


def test_packing_off_times_every_quantized_width_simulated(tiny_switchable, lm_dataset):
    speed = PackedSpeedConfig(**FAST_SPEED, packed=False)
    config = BitEvalConfig(uniform=[4, "fp"], batch_size=2, max_batches=1, speed=speed)
    df = evaluate_settings(
        tiny_switchable, build_bit_settings(config, tiny_switchable), lm_dataset, config
    )
    assert list(df["speed_kind"]) == ["simulated", "fp"]
    assert df["bits_per_byte"].isna().all()  # no token_bytes given


def test_speed_can_be_switched_off(tiny_switchable, lm_dataset):
    config = BitEvalConfig(
        uniform=[8], speed=PackedSpeedConfig(enabled=False), batch_size=2, max_batches=1
    )
    df = evaluate_settings(
        tiny_switchable, build_bit_settings(config, tiny_switchable), lm_dataset, config
    )
    assert df.loc[0, "speed_kind"] == "not_measured"
    assert math.isnan(df.loc[0, "tokens_per_s"])
    assert df.loc[0, "eval_tokens"] == 2 * 15  # one batch of 2 sequences x 15 positions


def test_bad_configuration_raises_before_any_work(tiny_switchable, lm_dataset):
    config = BitEvalConfig(speed=PackedSpeedConfig(**FAST_SPEED))
    foreign = [BitSetting("uniform_4bit", "uniform", None, 4)]
    foreign.append(BitSetting("uniform_3bit", "uniform", None, 3))
    with pytest.raises(ValueError, match=r"settings\['uniform_3bit'\]: bits: width 3"):
        evaluate_settings(tiny_switchable, foreign, lm_dataset, config)
    assert set(tiny_switchable.precision_map().values()) == {(None, None)}  # nothing applied
    too_long = BitEvalConfig(speed=PackedSpeedConfig(decode_tokens=65))
    with pytest.raises(ValueError, match="speed.decode_tokens: 65 exceeds"):
        evaluate_settings(tiny_switchable, foreign[:1], lm_dataset, too_long)


def test_uniform_default_follows_the_models_widths():
    names = [c.name for c in build_configurations(BitEvalConfig(), [2, 4], n_layer=2)]
    assert names == ["uniform_2bit", "uniform_4bit", "fp"]


def test_one_dict_applies_to_every_block_and_high_low_resolve_per_model():
    config = BitEvalConfig(uniform=[], layer_wise={"hl": {"attn_bits": "high", "mlp_bits": "low"}})
    (configuration,) = build_configurations(config, [2, 4], n_layer=3)
    assert configuration.layer_config == [{"attn_bits": 4, "mlp_bits": 2}] * 3
    (configuration,) = build_configurations(config, [4, 8], n_layer=2)
    assert configuration.layer_config == [{"attn_bits": 8, "mlp_bits": 4}] * 2


def test_check_widths_rejects_a_width_the_model_lacks_without_a_model():
    with pytest.raises(ValueError, match=r"layer_wise.x\[0\].mlp_bits: width 8 is not allowed"):
        check_widths(BitEvalConfig(layer_wise={"x": {"attn_bits": 2, "mlp_bits": 8}}), [2, 4])
    with pytest.raises(ValueError, match="uniform: width 8 is not allowed"):
        check_widths(BitEvalConfig(uniform=[8]), [2, 4])


def test_build_bit_settings_reads_widths_and_depth_from_the_model(tiny_switchable):
    config = BitEvalConfig(layer_wise={"hl": {"attn_bits": "high", "mlp_bits": "low"}})
    settings = build_bit_settings(config, tiny_switchable)
    assert [s.name for s in settings] == [
        "uniform_2bit",
        "uniform_4bit",
        "uniform_8bit",
        "fp",
        "hl",
    ]
    assert settings[-1].layer_config == [{"attn_bits": 8, "mlp_bits": 2}] * 2
    assert {s.packed_dtype for s in settings[:4]} == {"bfloat16"} and settings[
        -1
    ].packed_dtype is None
    with pytest.raises(ValueError, match="model: GPT2LMHeadModel is not a SwitchableLM"):
        build_bit_settings(config, tiny_switchable.model)


def test_a_layer_wise_setting_for_another_depth_is_refused(tiny_switchable, lm_dataset):
    (deeper,) = build_configurations(
        BitEvalConfig(uniform=[], layer_wise={"m": {"attn_bits": 8, "mlp_bits": 4}}), [2, 4, 8], 3
    )
    config = BitEvalConfig(speed=PackedSpeedConfig(enabled=False))
    with pytest.raises(ValueError, match=r"settings\['m'\]: layer_config: has 3 layer entries"):
        evaluate_settings(tiny_switchable, [deeper], lm_dataset, config)
