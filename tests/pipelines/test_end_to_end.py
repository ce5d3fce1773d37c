"""End-to-end `kedro run --env=debug` through a KedroSession, in a throw-away copy of the project."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pytest
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def project_copy(tmp_path, monkeypatch, mlflow_store):
    """conf/, pyproject.toml and the embedded corpus copied to tmp; cwd moved there."""
    root = tmp_path / "project"
    root.mkdir()
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copy(PROJECT_ROOT / "pyproject.toml", root / "pyproject.toml")
    shutil.copy(PROJECT_ROOT / ".telemetry", root / ".telemetry")
    raw = root / "data" / "01_raw"
    raw.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "data" / "01_raw" / "python_docs.jsonl", raw / "python_docs.jsonl")
    monkeypatch.chdir(root)
    bootstrap_project(root)
    return root


def _run(root: Path, pipeline: str, **runtime_params):
    with KedroSession.create(
        project_path=root, env="debug", runtime_params=runtime_params or None
    ) as session:
        return session.run(pipeline_names=[pipeline])


@pytest.mark.slow
def test_debug_pretrain_run_trains_saves_and_registers_base_model(project_copy, mlflow_store):
    _run(project_copy, "pretrain")

    versions = sorted((project_copy / "data/06_models/debug/base_lm").iterdir())
    assert len(versions) == 1
    saved = versions[0] / "base_lm"
    assert (saved / "model.safetensors").is_file()
    assert (saved / "tokenizer.json").is_file()

    registration = json.loads(
        (project_copy / "data/08_reporting/base_model_registration.json").read_text()
    )
    assert registration["registered"] is True
    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    model_versions = client.search_model_versions("name='base_lm'")
    assert [v.version for v in model_versions] == [registration["version"]]

    run = client.get_run(registration["run_id"])
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) >= 2, "training loss is logged as a step history"
    assert run.data.params["pretrain.model.preset"] == "debug"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pretrain_loss_curve.png", "pretrain_config.json", "tokenizer"} <= artifacts

    # A second run is a new model version, and the first saved model is untouched.
    _run(project_copy, "pretrain")
    assert len(list((project_copy / "data/06_models/debug/base_lm").iterdir())) == 2
    assert (saved / "model.safetensors").is_file()
    assert len(client.search_model_versions("name='base_lm'")) == 2
