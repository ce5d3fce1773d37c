"""Every parameter checked before the first node runs.

Nodes build their typed configs from their ``params:`` inputs themselves, but a node only runs
after the ones before it: a bad ``pretrain.training`` key used to stop the run after
``data_processing`` had already rewritten the tokenizer, the reports and the token cache. The
:class:`ValidateParameters` hook therefore builds, in ``before_pipeline_run`` (first among the
hooks, so before kedro-mlflow opens a run), the typed config of every parameter group the
pipeline reads, runs the checks that need several groups (``data.seq_len`` against the model's
positions, a validation split where something evaluates, widths against the model's depth, a
registry version that must exist, output folders that are files), and refuses unknown groups.
A bad parameter then stops the run before anything is written, with one error listing every
problem by its full key.

A family adds one :class:`ParameterGroup` to :data:`GROUPS`: its parser (the same function its
nodes call) and, if it has any, its cross-group checks. Both are named as ``"module:function"``
and imported only when a pipeline uses the group, so start-up stays cheap.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.framework.hooks import hook_impl

from router_pipelines.config import ConfigError, unknown_keys_message

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ParameterGroup:
    """A top-level parameter group: how to parse it, and its checks against other groups."""

    name: str
    parse: str  # "module:function(group_dict) -> typed config"
    checks: str | None = None  # "module:function(run: RunParameters) -> list[str]" problems


GROUPS: tuple[ParameterGroup, ...] = (
    ParameterGroup(
        "data",
        "router_pipelines.pipelines.data_processing.checks:parse_data_params",
        "router_pipelines.pipelines.data_processing.checks:check_data",
    ),
    ParameterGroup(
        "pretrain",
        "router_pipelines.pipelines.pretrain.config:parse_pretrain_params",
        "router_pipelines.pipelines.pretrain.checks:check_pretrain",
    ),
    ParameterGroup(
        "switchable",
        "router_pipelines.pipelines.switchable.config:parse_switchable_params",
        "router_pipelines.pipelines.switchable.checks:check_switchable",
    ),
    ParameterGroup(
        "memory",
        "router_pipelines.pipelines.memory.config:parse_memory_params",
        "router_pipelines.pipelines.memory.checks:check_memory",
    ),
    ParameterGroup(
        "depth_routing",
        "router_pipelines.pipelines.depth_routing.config:parse_depth_routing_params",
        "router_pipelines.pipelines.depth_routing.checks:check_depth_routing",
    ),
    ParameterGroup("promotion", "router_pipelines.promotion:parse_promotion_params"),
    ParameterGroup(
        "query_router",
        "router_pipelines.pipelines.query_router.config:parse_query_router_params",
        "router_pipelines.pipelines.query_router.checks:check_query_router",
    ),
    ParameterGroup(
        "precision_router",
        "router_pipelines.pipelines.precision_router.config:parse_precision_router_params",
        "router_pipelines.pipelines.precision_router.checks:check_precision_router",
    ),
)


class ParameterValidationError(ConfigError):
    """One or more parameters are invalid; nothing was run."""


@dataclass
class RunParameters:
    """What the checks see: the raw parameters, the parsed groups, the pipeline and catalog."""

    raw: Mapping[str, Any]
    parsed: dict[str, Any]
    pipeline: Any
    catalog: Any
    used_params: frozenset[str] = field(default_factory=frozenset)  # e.g. "switchable.base"

    def consumers(self, dataset: str) -> list[str]:
        """The names of the nodes that read ``dataset``."""
        return sorted(node.name for node in self.pipeline.nodes if dataset in node.inputs)

    def registry(self) -> Any:
        """The catalog's ``model_registry`` handle (loaded on first use), or ``None``."""
        if "model_registry" not in self.catalog:
            return None
        return self.catalog.load("model_registry")


def validate_run(raw_params: Mapping[str, Any], pipeline: Any, catalog: Any) -> dict[str, Any]:
    """Parse and cross-check every parameter group ``pipeline`` reads.

    Returns:
        The parsed group configs by group name.

    Raises:
        ParameterValidationError: listing every problem found, one per line.
    """
    problems: list[str] = []
    known = {group.name: group for group in GROUPS}
    unknown = sorted(set(raw_params) - set(known))
    if unknown:
        problems.append(unknown_keys_message("parameters", unknown, known) + _group_hint(unknown))
    used_params = _used_parameters(pipeline)
    used_groups = {key.split(".")[0] for key in used_params}
    parsed: dict[str, Any] = {}
    for name in sorted(used_groups & set(known)):
        try:
            parsed[name] = _import(known[name].parse)(raw_params.get(name))
        except (ValueError, TypeError) as err:
            problems.append(str(err))
    if not problems:  # cross-checks assume every group they read parsed
        run = RunParameters(raw_params, parsed, pipeline, catalog, frozenset(used_params))
        for name in sorted(parsed):
            if known[name].checks:
                problems.extend(_import(known[name].checks)(run))
    if problems:
        listed = "\n".join(f"- {problem}" for problem in problems)
        raise ParameterValidationError(
            f"Invalid parameters; nothing was run and nothing was written:\n{listed}"
        )
    return parsed


def _group_hint(unknown: Iterable[str]) -> str:
    """A hint for the common slip of a key that belongs inside a group (``raw_path``)."""
    inside = {"raw_path": "data.raw_path"}
    hints = [f"{key} is now {inside[key]}" for key in unknown if key in inside]
    return f" ({'; '.join(hints)})" if hints else ""


def _used_parameters(pipeline: Any) -> set[str]:
    keys = set()
    for node in pipeline.nodes:
        for name in node.inputs:
            if name.startswith("params:"):
                keys.add(name.removeprefix("params:"))
    return keys


def _import(path: str) -> Callable[..., Any]:
    module, _, attr = path.partition(":")
    return getattr(importlib.import_module(module), attr)


class ValidateParameters:
    """Runs :func:`validate_run` before the pipeline, ahead of every other hook."""

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        validate_run(catalog.load("parameters"), pipeline, catalog)


# --- helpers for the families' checks --------------------------------------------------------


def path_problem(key: str, value: str | None, *, must_be: str) -> str | None:
    """A problem when ``value`` exists as the wrong kind of path (``must_be``: folder or file)."""
    if value is None:
        return None
    path = Path(value)
    if must_be == "folder" and path.exists() and not path.is_dir():
        return f"{key}: {value!r} exists and is a file, not a folder; choose another path"
    if must_be == "file" and not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        return f"{key}: {value!r} {what}"
    return None


def registry_problem(run: RunParameters, key: str, source: Any, default_name: str) -> str | None:
    """A problem when ``source`` (a ModelSourceConfig at ``key``) asks for a registered
    version that does not exist."""
    if source.source != "registry":
        return None
    registry = run.registry()
    if registry is None:
        return f"{key}.source: registry, but the catalog declares no model_registry"
    try:
        registry.get(source.registry_name or default_name, source.registry_version)
    except ValueError as err:
        return f"{key}.registry_name / registry_version: {err}"
    return None


def remote_code_problem(key: str, name_or_path: str | None, trust_remote_code: bool) -> str | None:
    """A problem when a local model or tokenizer folder ships its own code (``auto_map``) and
    ``trust_remote_code`` is off: transformers would refuse it only once the node loads it."""
    if not name_or_path or trust_remote_code or not Path(name_or_path).is_dir():
        return None
    import json

    for name in ("config.json", "tokenizer_config.json"):
        path = Path(name_or_path) / name
        try:
            declares_code = "auto_map" in json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if declares_code:
            return (
                f"{key}.name_or_path: {name_or_path!r} ships its own Python code (auto_map in "
                f"{name}); loading it runs that code. Set {key}.trust_remote_code: true only if "
                "you trust its source"
            )
    return None


def log_precision(key: str, training_config: Any) -> None:
    """Say before the run which precision a training config really trains in on this machine
    (a warning when it is not what was asked, e.g. fp16 on a CPU runs in fp32)."""
    from router_pipelines.training import describe_precision, precision_plan

    plan = precision_plan(training_config)
    level = logging.WARNING if plan.note else logging.INFO
    logger.log(level, "%s.%s", key, describe_precision(training_config))
