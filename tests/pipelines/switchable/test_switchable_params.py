"""Bad switchable parameters stop the run before any training, naming the value."""

import copy
from pathlib import Path

import pytest
import yaml

from router_pipelines.pipelines.switchable.config import parse_switchable_params

BASE = yaml.safe_load(
    (Path(__file__).resolve().parents[3] / "conf/base/parameters_switchable.yml").read_text()
)["switchable"]


def with_change(group: str, key: str, value):
    params = copy.deepcopy(BASE)
    params[group][key] = value
    return params


def test_committed_defaults_parse():
    parsed = parse_switchable_params(BASE)
    assert parsed.model.bit_widths == [2, 4, 8]
    assert parsed.switching.strategy == "joint"
    assert parsed.training.output_dir == "${globals:paths.checkpoints}/switchable"
    assert parsed.training.switch_strategy == "joint"  # the engine config carries the family's
    assert parsed.eval_bits == 2


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ([2, 4, 1], r"bit_widths.*1"),
        ([2, 4, 9], r"bit_widths.*9"),
        (["four", 8], r"bit_widths.*'four'"),
        ([], r"bit_widths"),
    ],
)
def test_unsupported_width_is_named(value, message):
    with pytest.raises(ValueError, match=message) as error:
        parse_switchable_params(with_change("model", "bit_widths", value))
    assert "switchable.model" in str(error.value)
    assert "2" in str(error.value) and "8" in str(error.value), "says what is allowed"


def test_unknown_strategy_lists_the_allowed_ones():
    with pytest.raises(ValueError, match=r"strategy: 'zigzag' is not allowed.*cyclic.*joint"):
        parse_switchable_params(with_change("training", "switch_strategy", "zigzag"))


def test_empty_schedule_is_rejected_for_scheduled():
    params = with_change("training", "switch_strategy", "scheduled")
    params["training"]["bit_width_schedule"] = []
    with pytest.raises(ValueError, match="bit_width_schedule"):
        parse_switchable_params(params)


def test_schedule_width_outside_bit_widths_is_rejected():
    params = with_change("training", "switch_strategy", "scheduled")
    params["training"]["bit_width_schedule"] = [8, 3]
    with pytest.raises(ValueError, match=r"bit_width_schedule.*\[3\]"):
        parse_switchable_params(params)


def test_unknown_keys_are_named():
    with pytest.raises(
        ValueError,
        match=r"switchable.training: unknown key 'max_stepz' \(did you mean 'max_steps'\?\)",
    ):
        parse_switchable_params(with_change("training", "max_stepz", 3))
    with pytest.raises(ValueError, match=r"switchable: unknown key 'modle' \(did you mean 'model'"):
        parse_switchable_params({**BASE, "modle": {}})


def test_layer_wise_config_of_the_wrong_length_is_named():
    from router_pipelines.families.switchable import build_configurations

    params = copy.deepcopy(BASE)
    params["experiment"]["evaluation"]["layer_wise"] = {"mix": [{"attn_bits": 8, "mlp_bits": 4}]}
    parsed = parse_switchable_params(params)
    with pytest.raises(ValueError, match=r"layer_wise.mix: has 1 layer entries; the model has 2"):
        build_configurations(parsed.experiment.evaluation, [2, 4, 8], n_layer=2)


def test_evaluation_widths_the_model_lacks_fail_before_training():
    params = with_change("model", "bit_widths", [2, 4])
    params["experiment"]["evaluation"]["uniform"] = [2, 8]
    with pytest.raises(ValueError, match=r"switchable.experiment.evaluation.uniform: width 8"):
        parse_switchable_params(params)


def test_narrower_bit_widths_work_with_the_default_evaluation():
    parsed = parse_switchable_params(with_change("model", "bit_widths", [2, 4]))
    assert parsed.switching.bit_widths == [2, 4]


def test_lr_multipliers_are_checked_and_refused_under_joint():
    params = with_change("training", "lr_multipliers", {2: 2.0})
    with pytest.raises(ValueError, match=r"lr_multipliers: \{2: 2.0\} has no effect under .*joint"):
        parse_switchable_params(params)
    params["training"]["switch_strategy"] = "cyclic"
    assert parse_switchable_params(params).training.lr_multipliers == {2: 2.0}
    params["training"]["lr_multipliers"] = {3: 2.0}
    with pytest.raises(ValueError, match=r"switchable\.training\.lr_multipliers: width 3"):
        parse_switchable_params(params)
