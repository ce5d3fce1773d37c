"""Project CLI: Kedro's own ``kedro run``, reading list values in ``--params``.

Kedro splits ``--params`` on every comma, so ``--params=switchable.model.bit_widths=[2,4]``
would fail. This project overrides ``run`` (Kedro loads ``<package>.cli.cli`` and lets it
replace built-in commands) with the same command whose ``--params`` splits only on commas
outside brackets and braces; everything else is Kedro's ``run`` unchanged.
"""

from __future__ import annotations

import copy
import functools
import sys
from typing import Any

import click
from kedro.framework.cli.project import run as kedro_run
from omegaconf import OmegaConf

from router_pipelines.telemetry import disable_telemetry, disable_viz_version_check

# Kedro's CLI imports this module while it builds its commands, before any of them runs (and
# before it reads settings.py): the earliest point at which the project can switch telemetry
# off for every `kedro ...` command, and replace Kedro-Viz's version lookup, which
# `kedro viz run` makes before it loads the project.
disable_telemetry()
if "kedro_viz" in sys.modules:  # Kedro loaded it as a CLI plugin
    disable_viz_version_check()


def split_top_level(value: str) -> list[str]:
    """``"a=[1,2],b=3"`` -> ``["a=[1,2]", "b=3"]``: commas inside ``[]``/``{}`` are kept."""
    items, depth, current = [], 0, []
    for char in value:
        if char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(depth - 1, 0)
        if char == "," and depth == 0:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return [item.strip() for item in items if item.strip()]


def parse_params(value: str) -> dict[str, Any]:
    """``a.b=1,c=[2,4]`` -> ``{"a": {"b": 1}, "c": [2, 4]}`` (values typed as YAML, like Kedro).

    Raises:
        click.UsageError: an item without ``=`` or with an empty key, naming the item.
    """
    dot_list = []
    for item in split_top_level(value or ""):
        key, equals, val = item.partition("=")
        if not equals:
            raise click.UsageError(
                f"Invalid format of `params` option: Item `{item}` must contain a key and a "
                "value separated by `=`."
            )
        if not key.strip():
            raise click.UsageError(
                "Invalid format of `params` option: Parameter key cannot be an empty string."
            )
        dot_list.append(f"{key.strip()}={val}")
    return OmegaConf.to_container(OmegaConf.from_dotlist(dot_list))  # type: ignore[return-value]


def _params_callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    return value if isinstance(value, dict) else parse_params(value)


def _run_with_list_params() -> click.Command:
    """Kedro's ``run`` with list-aware ``--params``; a parameter refused before the run is
    printed as one clean error (``Error: Invalid parameters; ...``, exit code 1) instead of a
    traceback through Kedro's internals."""
    command = copy.copy(kedro_run)
    run_callback = kedro_run.callback

    @functools.wraps(run_callback)
    def callback(*args: Any, **kwargs: Any) -> Any:
        from router_pipelines.validation import ParameterValidationError

        try:
            return run_callback(*args, **kwargs)
        except ParameterValidationError as error:
            raise click.ClickException(str(error)) from None

    command.callback = callback
    params = []
    for option in kedro_run.params:
        if option.name == "params":
            option = copy.copy(option)
            option.callback = _params_callback
        params.append(option)
    command.params = params
    return command


@click.group(name="router_pipelines")
def cli() -> None:
    """Commands of the router_pipelines project."""


run = _run_with_list_params()
cli.add_command(run, "run")
