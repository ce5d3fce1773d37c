"""Switching strategies and per-width learning rates of the switchable family."""

from __future__ import annotations

import copy

import pytest

from router_pipelines.config import config_from_dict
from router_pipelines.families.switchable import (
    SwitchingConfig,
    bit_widths_for_step,
    lr_multiplier_fn,
    width_step_counts,
)


def sequence(config: SwitchingConfig, steps: int) -> list:
    return [bit_widths_for_step(step, config) for step in range(steps)]


def single(config: SwitchingConfig, steps: int) -> list:
    return [widths[0] for widths in sequence(config, steps)]


def test_cyclic_sequence():
    config = SwitchingConfig(strategy="cyclic", bit_widths=[2, 4, 8], switch_interval=2)
    assert single(config, 8) == [2, 2, 4, 4, 8, 8, 2, 2]


def test_random_sequence_is_a_function_of_seed_and_interval():
    config = SwitchingConfig(strategy="random", bit_widths=[2, 4, 8], switch_interval=1, seed=0)
    golden = single(config, 12)
    assert golden == [8, 4, 8, 4, 4, 8, 4, 8, 2, 2, 2, 2]
    assert single(copy.deepcopy(config), 12) == golden  # a resumed run sees the same widths
    assert [bit_widths_for_step(s, config) for s in (11, 5)] == [[2], [8]]
    assert single(SwitchingConfig(strategy="random", switch_interval=1, seed=1), 12) != golden
    held = single(SwitchingConfig(strategy="random", switch_interval=3, seed=0), 12)
    assert held == [w for w in golden[:4] for _ in range(3)]


def test_scheduled_sequence_repeats():
    config = SwitchingConfig(
        strategy="scheduled",
        bit_widths=[2, 4, 8],
        bit_width_schedule=[8, 4, 2, 4, 8],
        switch_interval=2,
    )
    assert single(config, 12) == [8, 8, 4, 4, 2, 2, 4, 4, 8, 8, 8, 8]


def test_progressive_sequence_goes_high_to_low():
    config = SwitchingConfig(strategy="progressive", bit_widths=[2, 4, 8], max_steps=6)
    assert single(config, 8) == [8, 8, 4, 4, 2, 2, 2, 2]
    uneven = SwitchingConfig(strategy="progressive", bit_widths=[4, 2, 8], max_steps=10)
    assert single(uneven, 10) == [8, 8, 8, 8, 4, 4, 4, 2, 2, 2]
    with_fp = SwitchingConfig(strategy="progressive", bit_widths=[4, "fp"], max_steps=4)
    assert single(with_fp, 4) == [None, None, 4, 4]


def test_joint_trains_every_width_high_to_low():
    config = SwitchingConfig(strategy="joint", bit_widths=[2, None, 8])
    assert sequence(config, 2) == [[None, 8, 2], [None, 8, 2]]


def test_width_step_counts():
    cyclic = SwitchingConfig(strategy="cyclic", bit_widths=[2, 4, 8], switch_interval=2)
    assert width_step_counts(cyclic, 10) == {2: 4, 4: 4, 8: 2}
    joint = SwitchingConfig(strategy="joint", bit_widths=[2, 8])
    assert width_step_counts(joint, 5) == {2: 5, 8: 5}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"strategy": "annealed"}, r"strategy: 'annealed' .*\['cyclic', 'random', 'scheduled'"),
        ({"strategy": "scheduled"}, r"bit_width_schedule: expected a non-empty list"),
        (
            {"strategy": "scheduled", "bit_width_schedule": []},
            r"bit_width_schedule: expected a non",
        ),
        ({"bit_width_schedule": [8, 3]}, r"bit_width_schedule: width\(s\) \[3\] are not in"),
        ({"switch_interval": 0}, r"switch_interval: must be an integer >= 1, got 0"),
        ({"strategy": "progressive"}, r"max_steps: strategy 'progressive' needs it"),
        ({"bit_widths": [2, "four"]}, r"bit_widths: 'four' .*from 2 to 8"),
        ({"bit_widths": [9]}, r"bit_widths: 9 .*from 2 to 8"),
        ({"bit_widths": [4, 4]}, r"bit_widths: .* repeats"),
        ({"seed": -1}, r"seed: must be an integer >= 0"),
    ],
)
def test_switching_config_errors(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(SwitchingConfig, values, "switching")


def test_lr_multiplier_per_precision():
    cyclic = SwitchingConfig(strategy="cyclic", bit_widths=[2, 4, 8], switch_interval=1)
    multiplier = lr_multiplier_fn(cyclic, {2: 2.0, "8": 0.5})
    assert [multiplier(step) for step in range(4)] == [2.0, 1.0, 0.5, 2.0]
    joint = lr_multiplier_fn(SwitchingConfig(strategy="joint"), {2: 2.0})
    assert joint(0) == 1.0
    with pytest.raises(ValueError, match=r"lr_multipliers: width 6 is not in bit_widths"):
        lr_multiplier_fn(cyclic, {6: 2.0})
