"""A throw-away copy of the project for tests that run real Kedro sessions or commands
(import as ``from project_copy import copy_project``, or ``debug_run`` for a whole run)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def copy_project(root: Path) -> Path:
    """conf/ (without local), pyproject.toml, .telemetry and the embedded corpus copied to
    ``root``; the package itself is the installed (editable) one. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    (root / "src").mkdir()
    raw = root / "data" / "01_raw"
    raw.mkdir(parents=True)
    for corpus in ("python_docs.jsonl", "python_docs_chat.jsonl"):
        shutil.copy(PROJECT_ROOT / "data/01_raw" / corpus, raw / corpus)
    return root


@contextmanager
def debug_run(root: Path, pipeline: str, env: str = "debug") -> Iterator:
    """Copy the project to ``root`` and run ``pipeline`` in a Kedro session there (``env``),
    with its own sqlite MLflow store; yields an ``MlflowClient`` on that store while the
    working directory is still ``root``, and closes any MLflow run left open afterwards."""
    import mlflow
    import pytest
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    copy_project(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        bootstrap_project(root)
        with KedroSession.create(project_path=root, env=env) as session:
            session.run(pipeline_names=[pipeline])
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        try:
            yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
