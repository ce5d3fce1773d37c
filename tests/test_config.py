from dataclasses import dataclass, field

import pytest

from router_pipelines.config import check_choice, check_positive, config_from_dict


@dataclass
class Inner:
    rate: float = 0.1

    def __post_init__(self):
        check_positive("rate", self.rate)


@dataclass
class Outer:
    name: str
    mode: str = "a"
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self):
        check_choice("mode", self.mode, ["a", "b"])


def test_builds_nested_dataclasses():
    config = config_from_dict(Outer, {"name": "x", "inner": {"rate": 0.5}}, "outer")
    assert config == Outer(name="x", mode="a", inner=Inner(rate=0.5))


def test_unknown_key_is_named_with_its_path_and_the_allowed_keys():
    with pytest.raises(
        ValueError,
        match=r"outer.inner: unknown key 'rte' \(did you mean 'rate'\?\); allowed keys are \['rate'\]",
    ):
        config_from_dict(Outer, {"name": "x", "inner": {"rte": 1}}, "outer")


def test_bad_value_names_the_field_and_allowed_values():
    with pytest.raises(
        ValueError, match=r"outer.mode: 'c' is not allowed; choose one of \['a', 'b'\]"
    ):
        config_from_dict(Outer, {"name": "x", "mode": "c"}, "outer")
    with pytest.raises(ValueError, match=r"outer.inner.rate: must be > 0, got -1"):
        config_from_dict(Outer, {"name": "x", "inner": {"rate": -1}}, "outer")


def test_missing_required_key_is_reported():
    with pytest.raises(ValueError, match="outer: .*name"):
        config_from_dict(Outer, {}, "outer")


def test_non_number_rejected():
    with pytest.raises(ValueError, match="rate: expected a number, got 'fast'"):
        check_positive("rate", "fast")
    with pytest.raises(ValueError, match="expected a number"):
        check_positive("rate", True)


@dataclass
class Pair:
    rate: float = 0.1
    label: str = "plain"


@dataclass
class WithOwnDefault:
    pair: Pair = field(default_factory=lambda: Pair(rate=0.9, label="chosen"))


def test_a_partial_group_keeps_the_defaults_its_parent_chose():
    """e.g. pretrain.register: {enabled: false} keeps the name base_lm, not RegisterConfig's."""
    assert config_from_dict(WithOwnDefault, {"pair": {"rate": 0.5}}, "w").pair == Pair(
        rate=0.5, label="chosen"
    )
    assert config_from_dict(WithOwnDefault, {}, "w").pair == Pair(rate=0.9, label="chosen")
