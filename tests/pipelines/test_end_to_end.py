"""End-to-end `kedro run --env=debug` through KedroSession, in a throw-away copy of the project.

One project copy per module: the default pipeline runs first (data → base model → switchable
→ evaluation → Pareto → registry), then `--pipeline=switchable` runs on the same outputs and
must reuse the saved base model, then it falls back to the registered one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from project_copy import copy_project
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

MODELS = Path("data/06_models/debug")
REPORTS = Path("data/08_reporting/debug")
MODEL_OUTPUT = Path("data/07_model_output/debug")
# The debug environment's logging and step counts (conf/debug/parameters_*.yml).
PRETRAIN_STEPS, PRETRAIN_LOGGING = 30, 5
SWITCHABLE_STEPS, SWITCHABLE_LOGGING = 12, 3


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy with cwd and MLflow moved there."""
    root = tmp_path_factory.mktemp("e2e") / "project"
    copy_project(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        bootstrap_project(root)
        yield root, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        while mlflow.active_run() is not None:
            mlflow.end_run()


def _run(root: Path, pipeline: str | None = None) -> None:
    with KedroSession.create(project_path=root, env="debug") as session:
        session.run(pipeline_names=[pipeline] if pipeline else None)


def _versions(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.fixture(scope="module")
def default_run(project):
    root, client = project
    _run(root)
    return root, client


def test_default_run_trains_saves_and_registers_the_base_model(default_run):
    root, client = default_run
    assert mlflow.active_run() is None, "the session's MLflow run is closed, not left stacked"
    versions = _versions(root / MODELS / "pretrain")
    assert len(versions) == 1
    saved = versions[0] / "pretrain"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()

    registration = _json(root / REPORTS / "pretrain/registration.json")
    assert registration["registered"] is True
    version = client.get_model_version("base_lm_debug", registration["version"])
    assert [str(v.version) for v in client.search_model_versions("name='base_lm_debug'")] == ["1"]
    metadata = _json(saved / "router_pipelines.json")
    summary = _json(root / REPORTS / "pretrain/training_summary.json")
    assert 0 < summary["validation_bits_per_byte"] < 8  # bits per UTF-8 byte, next to perplexity
    assert summary["validation_perplexity"] > 1
    assert version.tags["fingerprint"] == metadata["identity"]["fingerprint"]
    run = client.get_run(registration["run_id"])
    assert run.data.params["pretrain.model.preset"] == "debug"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "pretrain")}
    assert {"pretrain/loss_curve.png", "pretrain/resolved_config.json"} <= artifacts


def test_each_training_logs_one_history_under_its_namespace(default_run):
    root, client = default_run
    run_id = _json(root / REPORTS / "pretrain/registration.json")["run_id"]
    metrics = set(client.get_run(run_id).data.metrics)
    assert not {"train_loss", "eval_loss", "lr", "grad_norm", "tokens_per_s"} & metrics
    expected = {
        "pretrain": list(range(PRETRAIN_LOGGING, PRETRAIN_STEPS + 1, PRETRAIN_LOGGING)),
        "switchable": list(range(SWITCHABLE_LOGGING, SWITCHABLE_STEPS + 1, SWITCHABLE_LOGGING)),
    }
    for family, steps in expected.items():
        for name in ("train_loss", "lr", "tokens_per_s"):
            history = client.get_metric_history(run_id, f"{family}/{name}")
            assert [m.step for m in history] == steps, (family, name)
        assert client.get_metric_history(run_id, f"{family}/eval_loss")
    # per-configuration results are one table artifact; only headline numbers are metrics
    assert not any("/eval/" in name for name in metrics)
    assert "switchable/lowest_width_bits_per_byte" in metrics


def test_default_run_evaluates_every_configuration_and_writes_the_seed_outputs(default_run):
    root, client = default_run
    results = _json(root / MODEL_OUTPUT / "switchable/switchable_precision_results.json")
    names = [c["name"] for c in results["configurations"]]
    assert names[:4] == ["uniform_2bit", "uniform_4bit", "uniform_8bit", "fp"]
    assert {"attn_high_mlp_low", "attn_low_mlp_high", "random_0", "random_1"} <= set(names)
    for configuration in results["configurations"]:
        for key in ("perplexity", "bits_per_byte", "effective_bits", "compression_ratio"):
            assert configuration[key] is not None and configuration[key] > 0, (configuration, key)
        assert configuration["tokens_per_s"] > 0
    by_name = {c["name"]: c for c in results["configurations"]}
    assert by_name["uniform_2bit"]["effective_bits"] < by_name["uniform_4bit"]["effective_bits"]
    assert by_name["uniform_8bit"]["speed_kind"] == "packed_int8"
    assert by_name["uniform_4bit"]["speed_kind"] == "packed_int4"
    assert by_name["uniform_2bit"]["speed_kind"] == "simulated"

    pareto = pd.read_parquet(root / REPORTS / "switchable/pareto.parquet")
    assert len(pareto) >= 1 and (pareto["pareto_bits"] | pareto["pareto_speed"]).all()
    assert set(pareto["name"]) <= set(names)
    assert (root / REPORTS / "switchable/pareto.png").stat().st_size > 1000

    summary = _json(root / REPORTS / "switchable/training_summary.json")
    assert summary["steps_per_width"] == {"8bit": 12, "4bit": 12, "2bit": 12}  # joint, 12 steps

    registration = _json(root / REPORTS / "switchable/registration.json")
    assert registration["registered"] is True
    version = client.get_model_version("switchable_lm_debug", registration["version"])
    assert version.tags["pareto_configurations"] == ",".join(registration["pareto_configurations"])
    assert len(_versions(root / MODELS / "switchable")) == 1


def test_switchable_pipeline_reuses_the_saved_base_model(default_run):
    root, client = default_run
    _run(root, "switchable")
    assert len(_versions(root / MODELS / "pretrain")) == 1, "no duplicate base model"
    assert len(client.search_model_versions("name='base_lm_debug'")) == 1, "reused, not retrained"
    registration = _json(root / REPORTS / "pretrain/registration.json")
    assert registration["registered"] is False and "catalog" in registration["reason"]
    assert len(_versions(root / MODELS / "switchable")) == 2, "never overwritten"
    assert len(client.search_model_versions("name='switchable_lm_debug'")) == 2


def test_switchable_pipeline_falls_back_to_the_registered_base_model(default_run):
    root, client = default_run
    saved = root / MODELS / "pretrain"
    shutil.move(saved, root / "base_lm_moved_away")  # no saved base model any more
    _run(root, "switchable")
    assert len(client.search_model_versions("name='base_lm_debug'")) == 1, "reused, not retrained"
    copies = _versions(saved)
    assert len(copies) == 1, "the registered model is saved as a catalog version"
    registered = _versions(root / "base_lm_moved_away")[0] / "pretrain"
    copied_weights = load_file(copies[0] / "pretrain/model.safetensors")
    registered_weights = load_file(registered / "model.safetensors")
    assert copied_weights.keys() == registered_weights.keys()
    assert all(torch.equal(copied_weights[k], registered_weights[k]) for k in copied_weights)
    assert len(client.search_model_versions("name='switchable_lm_debug'")) == 3


def test_a_changed_setting_is_not_served_by_a_stale_model(default_run):
    """A scheduled retrain with new settings must train, not reuse the old base model."""
    root, client = default_run
    with KedroSession.create(
        project_path=root,
        env="debug",
        runtime_params={"pretrain": {"training": {"learning_rate": 0.002}}},
    ) as session:
        session.run(pipeline_names=["switchable"])
    assert len(client.search_model_versions("name='base_lm_debug'")) == 2, (
        "retrained and registered"
    )
    assert len(_versions(root / MODELS / "pretrain")) == 2
