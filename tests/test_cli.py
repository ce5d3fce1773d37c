"""The project's `kedro run`: Kedro's own command, with list values allowed in --params."""

import click
import pytest
from kedro.framework.cli.project import run as kedro_run

from router_pipelines.cli import cli, parse_params, split_top_level


def test_commas_inside_brackets_do_not_split():
    assert split_top_level("a=[2,4],b.c=3,d={x: 1, y: 2}") == ["a=[2,4]", "b.c=3", "d={x: 1, y: 2}"]


def test_values_are_typed_like_kedro_run():
    params = parse_params(
        "switchable.model.bit_widths=[2,4],pretrain.training.max_steps=3,data.mode=instruction"
    )
    assert params == {
        "switchable": {"model": {"bit_widths": [2, 4]}},
        "pretrain": {"training": {"max_steps": 3}},
        "data": {"mode": "instruction"},
    }


@pytest.mark.parametrize(
    ("value", "message"), [("a.b", "Item `a.b` must contain a key"), ("=3", "cannot be an empty")]
)
def test_malformed_items_are_named(value, message):
    with pytest.raises(click.UsageError, match=message):
        parse_params(value)


def test_run_keeps_every_kedro_option_and_only_changes_params():
    run = cli.commands["run"]
    assert [p.name for p in run.params] == [p.name for p in kedro_run.params]
    ours = {p.name: p for p in run.params}
    theirs = {p.name: p for p in kedro_run.params}
    assert ours["params"].callback is not theirs["params"].callback
    assert ours["pipelines"].callback is theirs["pipelines"].callback
    assert ours["params"].callback(None, ours["params"], "m.bits=[2,4]") == {"m": {"bits": [2, 4]}}
