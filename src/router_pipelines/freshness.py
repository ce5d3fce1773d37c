"""Data-freshness check before a scheduled retrain: is the champion already trained on this?

    python -m router_pipelines.freshness --pipelines switchable --env debug
    python -m router_pipelines.freshness --model base_lm
    # exit 0: something changed (or no model yet), retrain; exit 99: nothing changed, skip

A retrain is pointless when the raw data, the code and the configuration are the ones the
current champion was trained with. Every run carries them as tags (:class:`~router_pipelines.
hooks.RunTags`): ``data_fingerprint`` (the raw corpus's sha256), ``data_sets_fingerprint``
(every corpus the parameters name, e.g. the memory family's chat corpus), ``git_commit``
(``+dirty`` with uncommitted changes), ``config_fingerprint`` (the sha256 of all parameters of
the environment) and ``catalog_fingerprint`` (of the environment's resolved catalog
configuration). This compares the run of each model's champion with the checkout as it is now.

``--pipelines`` checks the models the pipelines end with (read from each registration node's
``register`` parameters, so a new family needs nothing here: :func:`registered_models`); the
pipelines are fresh only when all of them are. A model is covered by its ``champion``, or by its ``challenger`` when that one
was trained on this very state and lost the promotion (training it again would give the same
model: every seed is fixed); a model without aliases (a family without a promotion rule) by its
latest version. Exit code 99 is what Airflow's ``BashOperator(skip_on_exit_code=99)`` turns
into "skipped", so the retrain downstream is skipped too (``airflow/dag_template.py.j2``); any
other failure is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

FRESH_EXIT_CODE = 99
COMPARED_TAGS = (
    "data_fingerprint",
    "data_sets_fingerprint",
    "git_commit",
    "config_fingerprint",
    "catalog_fingerprint",
)
# The aliases router_pipelines.promotion sets, in the order they cover a model.
COVERING_ALIASES = ("champion", "challenger")


def config_fingerprint(parameters: Mapping[str, Any]) -> str:
    """``sha256:<16 hex>`` of the parameters (key order does not matter)."""
    import hashlib

    text = json.dumps(parameters, sort_keys=True, default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def catalog_config(context: Any) -> dict[str, Any] | None:
    """The environment's catalog configuration as Kedro resolves it for ``context`` (``None``
    when it cannot be read: the run itself then reports the catalog's error)."""
    try:
        return dict(context.config_loader["catalog"])
    except Exception:  # noqa: BLE001 - a fingerprint must never stop a run
        return None


def _load_project(project_path: Path, env: str | None) -> tuple[dict[str, Any], Any]:
    """The project's parameters and catalog configuration for ``env``; opening the context also
    points MLflow at the project's store (kedro-mlflow's ``after_context_created``), as a run
    would."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(project_path)
    with KedroSession.create(project_path=project_path, env=env) as session:
        context = session.load_context()
        return context.params, catalog_config(context)


def current_state(
    project_path: Path,
    env: str | None,
    parameters: Mapping[str, Any] | None = None,
    catalog: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The compared tags as a run started now in ``project_path`` with ``env`` would set them
    (``parameters`` and ``catalog``: the environment's, read from the project when omitted)."""
    from router_pipelines.tracking import (
        catalog_fingerprint,
        data_sets_fingerprint,
        git_commit,
        raw_data_fingerprint,
    )

    if parameters is None:
        parameters, catalog = _load_project(project_path, env)
    return {
        "data_fingerprint": raw_data_fingerprint(parameters.get("data"), project_path),
        "data_sets_fingerprint": data_sets_fingerprint(parameters, project_path),
        "git_commit": git_commit(project_path),
        "config_fingerprint": config_fingerprint(parameters),
        "catalog_fingerprint": catalog_fingerprint(catalog),
    }


def compare(champion_tags: Mapping[str, str], now: Mapping[str, str]) -> list[str]:
    """What changed since the champion's run (empty: nothing); a dirty checkout counts as
    changed (uncommitted code is not what the champion ran)."""
    changes = []
    for key in COMPARED_TAGS:
        # a tag the run did not set is an empty value (RunTags skips empty ones, e.g. no git)
        then, current = champion_tags.get(key, ""), now.get(key, "")
        if then != current:
            changes.append(f"{key}: {then!r} -> {current!r}")
    if str(now.get("git_commit", "")).endswith("+dirty") and not changes:
        changes.append("git_commit: the checkout has uncommitted changes")
    return changes


def _nested(parameters: Mapping[str, Any], dotted: str) -> Any:
    value: Any = parameters
    for part in dotted.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _register_names(node: Any, pipeline_name: str, parameters: Mapping[str, Any]) -> list[str]:
    """The names a registration node registers, read from its ``params:<...>.register`` input:
    ``name`` (+ ``routed_name`` for the query router), or ``names: {<kind>: <name>}`` for a
    family with one model per kind, the kind being the pipeline's name (``mod``, ``dtf``) or
    the namespace's ``model_type`` parameter. ``enabled: false`` registers nothing."""
    names: list[str] = []
    for source in node.inputs:
        if not (source.startswith("params:") and source.endswith(".register")):
            continue
        register = _nested(parameters, source.removeprefix("params:")) or {}
        if not register.get("enabled", True):
            continue
        by_kind = register.get("names") or {}
        kind = (
            pipeline_name
            if pipeline_name in by_kind
            else _nested(parameters, f"{node.namespace}.model_type")
        )
        found = [register.get("name"), register.get("routed_name"), by_kind.get(kind)]
        names.extend(name for name in found if name and name not in names)
    return names


def registered_models(
    pipeline_names: Iterable[str], pipelines: Mapping[str, Any], parameters: Mapping[str, Any]
) -> list[str]:
    """The registered models the pipelines end with: what a retrain of them is for.

    A registration node is one with a ``<namespace>.registration`` output. One whose model
    (the node's inputs of its own namespace) feeds another registration of the same pipeline
    (the base LM under the switchable model, the switchable model under a router) is left
    out: it is reused when compatible, and a reused model is not registered again, so its
    champion may be older than a fresh downstream model; the downstream model's run already
    carries the same data, code and configuration tags, which are the same for every model of
    a run. The default run (base → switchable → both routers) is judged by its routers.
    """
    names: list[str] = []
    for pipeline_name in pipeline_names:
        if pipeline_name not in pipelines:
            raise ValueError(
                f"--pipelines: unknown pipeline {pipeline_name!r}; registered pipelines: "
                f"{', '.join(sorted(pipelines))}"
            )
        pipeline = pipelines[pipeline_name]
        registrations = [
            node
            for node in pipeline.nodes
            if any(output.endswith(".registration") for output in node.outputs)
        ]
        upstream = {node.name: pipeline.to_nodes(node.name).datasets() for node in registrations}
        for node in registrations:
            # its own family's datasets (the model it registers and its documents), not what
            # it reads from upstream: a router's registration reads the switchable model too
            own = f"{node.namespace}." if node.namespace else ""
            model_inputs = {
                source
                for source in node.inputs
                if not source.startswith("params:") and source.startswith(own)
            }
            feeds_another = any(
                other is not node and model_inputs & upstream[other.name] for other in registrations
            )
            if not feeds_another:
                names.extend(
                    name
                    for name in _register_names(node, pipeline_name, parameters)
                    if name not in names
                )
    return names


def _covering_versions(client: Any, model: str) -> list[tuple[str, Any]]:
    """``[(label, version), ...]`` that may cover ``model``: its champion and challenger, or
    its latest version when it has no alias; empty when it has no version at all."""
    from mlflow.exceptions import MlflowException

    covering: list[tuple[str, Any]] = []
    for alias in COVERING_ALIASES:
        try:
            version = client.get_model_version_by_alias(model, alias)
        except MlflowException:
            continue
        if all(version.version != seen.version for _, seen in covering):
            covering.append((alias, version))
    if covering:
        return covering
    try:
        versions = client.search_model_versions(f"name = '{model}'")
    except MlflowException:
        return []
    if not versions:
        return []
    latest = max(versions, key=lambda version: int(version.version))
    return [("latest version, no champion alias", latest)]


def check_model(client: Any, model: str, now: Mapping[str, str]) -> tuple[bool, str]:
    """``(fresh, why)`` for one registered model against the state ``now``."""
    covering = _covering_versions(client, model)
    if not covering:
        return False, f"{model} has no registered version yet: train"
    stale = []
    for label, version in covering:
        changes = compare(client.get_run(version.run_id).data.tags, now)
        if not changes:
            if label == "challenger":
                reason = version.tags.get("promotion", "not promoted")
                return True, (
                    f"{model} v{version.version} (challenger, {reason}) was already trained on "
                    "this data, code and configuration: training it again gives the same model"
                )
            return True, (
                f"{model} v{version.version} ({label}) was trained on this data, code and "
                "configuration"
            )
        stale.append(f"{model} v{version.version} ({label}) is stale: " + "; ".join(changes))
    return False, "\n".join(stale)


def check_models(models: Sequence[str], now: Mapping[str, str]) -> tuple[bool, str]:
    """``(fresh, why)`` for several models: fresh only when every one is."""
    import mlflow

    if not models:
        return False, "these pipelines register no model to compare with: train"
    client = mlflow.MlflowClient()
    results = [check_model(client, model, now) for model in models]
    fresh = all(fresh for fresh, _ in results)
    lines = [why for _, why in results]
    if fresh:
        state = (
            f"{now['data_fingerprint'] or 'no data fingerprint'}, "
            f"{now['git_commit'] or 'no git'}, {now['config_fingerprint']}"
        )
        lines.append(f"nothing to retrain ({state})")
    else:
        lines.append("retraining")
    return fresh, "\n".join(lines)


def check(model: str, project_path: Path, env: str | None) -> tuple[bool, str]:
    """``(fresh, why)`` for registered model ``model``."""
    now = current_state(project_path, env)
    return check_models([model], now)


def check_pipelines(
    pipeline_names: Sequence[str], project_path: Path, env: str | None
) -> tuple[bool, str]:
    """``(fresh, why)`` for every model the pipelines register."""
    from kedro.framework.project import pipelines

    parameters, catalog = _load_project(project_path, env)
    models = registered_models(pipeline_names, pipelines, parameters)
    now = current_state(project_path, env, parameters, catalog)
    fresh, why = check_models(models, now)
    return fresh, f"pipelines {','.join(pipeline_names)} register {', '.join(models)}\n{why}"


def main(argv: Sequence[str] | None = None) -> int:
    from router_pipelines.telemetry import disable_telemetry

    disable_telemetry()
    parser = argparse.ArgumentParser(prog="python -m router_pipelines.freshness")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--model", help="one registered model, e.g. base_lm")
    target.add_argument(
        "--pipelines",
        "--pipeline",
        help="registered pipelines, comma-separated (e.g. __default__): every model they register",
    )
    parser.add_argument("--env", default=None, help="Kedro environment, e.g. debug")
    parser.add_argument("--project", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    project = args.project.resolve()
    if args.model:
        fresh, why = check(args.model, project, args.env)
    else:
        names = [name.strip() for name in args.pipelines.split(",") if name.strip()]
        try:
            fresh, why = check_pipelines(names, project, args.env)
        except ValueError as error:
            parser.error(str(error))
    print(why)
    return FRESH_EXIT_CODE if fresh else 0


if __name__ == "__main__":
    sys.exit(main())
