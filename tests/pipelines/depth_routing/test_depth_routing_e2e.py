"""End to end, as a user runs it: `kedro run --env=debug --pipeline=mod` (a KedroSession),
`--pipelines=dtf` (the real command) and an unchanged `--pipelines=dtf` re-run (reuses the
saved model), in a throw-away project copy with its own MLflow store; then the registered
model generates through its pyfunc, and a bad value stops a run before any node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from kedro.framework.session import KedroSession
from project_copy import debug_run

from router_pipelines.datasets import ModelVersionsDataset

pytestmark = pytest.mark.slow

MODELS = Path("data/06_models/debug")
REPORTS = Path("data/08_reporting/debug/depth_routing")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("depth_routing_e2e") / "project"
    with debug_run(root, "mod") as client:
        mod_registration = json.loads((root / REPORTS / "registration.json").read_text())
        mod_promotion = json.loads((root / REPORTS / "promotion.json").read_text())
        uri = f"sqlite:///{root / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "KEDRO_DISABLE_TELEMETRY": "1"}
        kedro = Path(sys.executable).parent / "kedro"
        # The dense baseline and speed were exercised by the mod run: skip them here (time).
        quick = "depth_routing.dense_baseline.enabled=false,depth_routing.evaluation.speed=false"
        command = [str(kedro), "run", "--env=debug", "--pipelines=dtf", f"--params={quick}"]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        dtf_registration = json.loads((root / REPORTS / "registration.json").read_text())
        # The same dtf run again, nothing changed: the saved model is reused, not retrained.
        command = [str(kedro), "run", "--env=debug", "--pipelines=dtf", f"--params={quick}"]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        yield root, client, mod_registration, mod_promotion, dtf_registration


def test_both_pipelines_train_evaluate_register_and_promote(project):
    from router_pipelines.pipelines.depth_routing.config import HEADLINE_METRICS

    root, client, mod_registration, mod_promotion, dtf_registration = project
    for registration, name in (
        (mod_registration, "mod_lm_debug"),
        (dtf_registration, "dtf_lm_debug"),
    ):
        assert registration["registered"] is True and registration["name"] == name
        version = client.get_model_version(name, registration["version"])
        assert version.tags["family"] == "depth_routing"
        assert 0 <= float(version.tags["predictor_accuracy"]) <= 1
        assert set(registration["metrics"]) == set(HEADLINE_METRICS)  # what checks.py allows
        aliases = {k: str(v) for k, v in client.get_registered_model(name).aliases.items()}
        assert aliases == {"champion": "1", "challenger": "1"}, "the first version is champion"
    assert mod_promotion["promoted"] is True and mod_promotion["alias"] == "champion"
    for folder in ("depth_routing", "depth_routing_best"):
        versions = [p for p in (root / MODELS / folder).iterdir() if not p.name.startswith(".")]
        assert len(versions) == 2  # one per trained model, never overwritten; reuse adds none
    # the dense baseline: mod's trained model, then the two dtf runs' skips (enabled: false)
    dense = root / MODELS / "depth_routing_dense"
    assert len([p for p in dense.iterdir() if not p.name.startswith(".")]) == 3
    assert len(ModelVersionsDataset(str(dense)).load().versions()) == 1
    figure = root / REPORTS / "routing_curve.png"
    assert figure.is_file() and figure.stat().st_size > 10_000


def test_an_unchanged_rerun_reuses_the_saved_model(project):
    root, client, *_ = project
    summary = json.loads((root / REPORTS / "training_summary.json").read_text())
    assert summary["origin"] == "catalog" and summary["model_type"] == "dtf"
    assert "depth_routing_best" in summary["reused_from"]
    registration = json.loads((root / REPORTS / "registration.json").read_text())
    assert (
        registration["registered"] is False and "not trained in this run" in registration["reason"]
    )
    promotion = json.loads((root / REPORTS / "promotion.json").read_text())
    assert promotion["promoted"] is False and "nothing registered" in promotion["reason"]
    assert len(client.search_model_versions("name='dtf_lm_debug'")) == 1
    report = json.loads((root / REPORTS / "routing_report.json").read_text())
    assert report["model_type"] == "dtf" and report["capacity_gamma"] == 0.25
    assert json.loads((root / REPORTS / "dense_summary.json").read_text()) == {"enabled": False}


def test_the_dtf_run_reports_its_gates_and_checkpoints(project):
    root, client, _, _, dtf_registration = project
    version = client.get_model_version("dtf_lm_debug", dtf_registration["version"])
    run = client.get_run(version.run_id)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "depth_routing")}
    assert "depth_routing/routing_curve.png" in artifacts  # S_CE / S_CU over training
    history = client.get_metric_history(run.info.run_id, "depth_routing/train_s_ce")
    assert history and all(0 <= m.value <= 1 for m in history)
    checkpoints = root / "data/06_models/debug/checkpoints/depth_routing/dtf"
    assert any((run_dir / "checkpoint-12").is_dir() for run_dir in checkpoints.iterdir())


def test_the_registered_model_generates_causally(project):
    root, client, mod_registration, *_ = project
    model = mlflow.pyfunc.load_model(mod_registration["model_uri"])
    lm = model.unwrap_python_model().bundle.model
    assert lm.routing_mode == "causal" and lm.routing_config.model_type == "mod"
    out = model.predict(["The json module"], params={"max_new_tokens": 5})
    assert len(out) == 1 and isinstance(out[0], str) and out[0]


def test_a_bad_value_stops_the_run_before_any_node(project):
    root, *_ = project
    before = sorted(str(p) for p in (root / "data").rglob("*"))
    with (
        KedroSession.create(
            project_path=root, env="debug", runtime_params={"depth_routing": {"model_type": "moe"}}
        ) as session,
        pytest.raises(Exception, match=r"depth_routing.model_type: 'moe' is not allowed"),
    ):
        session.run(pipeline_names=["depth_routing"])
    assert sorted(str(p) for p in (root / "data").rglob("*")) == before
