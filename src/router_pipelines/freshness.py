"""Data-freshness check before a scheduled retrain: is the champion already trained on this?

    python -m router_pipelines.freshness --model base_lm --env base
    # exit 0: something changed, retrain; exit 99: nothing changed since the champion, skip

A retrain is pointless when the raw data, the code and the configuration are the ones the
current champion was trained with. Every run carries them as tags (:class:`~router_pipelines.
hooks.RunTags`): ``data_fingerprint`` (the raw corpus's sha256), ``git_commit`` and
``config_fingerprint`` (the sha256 of all parameters of the environment). This compares the
champion's run with the checkout as it is now. Exit code 99 is what Airflow's
``BashOperator(skip_on_exit_code=99)`` turns into "skipped" (so the retrain downstream is
skipped too); any other failure is an error.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

FRESH_EXIT_CODE = 99
COMPARED_TAGS = ("data_fingerprint", "git_commit", "config_fingerprint")


def config_fingerprint(parameters: Mapping[str, Any]) -> str:
    """``sha256:<16 hex>`` of the parameters (key order does not matter)."""
    import hashlib

    text = json.dumps(parameters, sort_keys=True, default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def current_state(project_path: Path, env: str | None) -> dict[str, str]:
    """The three tags as a run started now in ``project_path`` with ``env`` would set them."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from router_pipelines.tracking import git_commit, raw_data_fingerprint

    bootstrap_project(project_path)
    with KedroSession.create(project_path=project_path, env=env) as session:
        parameters = session.load_context().params
    return {
        "data_fingerprint": raw_data_fingerprint(parameters.get("data"), project_path),
        "git_commit": git_commit(project_path),
        "config_fingerprint": config_fingerprint(parameters),
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


def check(model: str, project_path: Path, env: str | None) -> tuple[bool, str]:
    """``(fresh, why)`` for registered model ``model``'s champion."""
    import mlflow
    from mlflow.exceptions import MlflowException

    now = current_state(project_path, env)
    client = mlflow.MlflowClient()
    try:
        champion = client.get_model_version_by_alias(model, "champion")
    except MlflowException:
        return False, f"{model} has no champion yet: train"
    tags = client.get_run(champion.run_id).data.tags
    changes = compare(tags, now)
    if changes:
        return False, f"{model} v{champion.version} is stale: " + "; ".join(changes)
    return True, (
        f"{model} v{champion.version} was trained on this data, code and configuration "
        f"({now['data_fingerprint']}, {now['git_commit'] or 'no git'}, "
        f"{now['config_fingerprint']}): nothing to retrain"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from router_pipelines.telemetry import disable_telemetry

    disable_telemetry()
    parser = argparse.ArgumentParser(prog="python -m router_pipelines.freshness")
    parser.add_argument("--model", required=True, help="registered model, e.g. base_lm")
    parser.add_argument("--env", default=None, help="Kedro environment, e.g. debug")
    parser.add_argument("--project", type=Path, default=Path.cwd())
    args = parser.parse_args(argv)
    fresh, why = check(args.model, args.project.resolve(), args.env)
    print(why)
    return FRESH_EXIT_CODE if fresh else 0


if __name__ == "__main__":
    sys.exit(main())
