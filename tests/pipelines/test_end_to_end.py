"""End-to-end `kedro run --env=debug` through KedroSession, in a throw-away copy of the project.

One project copy per module: the default pipeline runs first (data → base model → switchable
→ evaluation → Pareto → registry), then `--pipeline=switchable` runs on the same outputs and
must reuse the saved base model.
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
from safetensors.torch import load_file

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """conf/, pyproject.toml and the embedded corpus copied to tmp; cwd and MLflow moved there."""
    root = tmp_path_factory.mktemp("e2e") / "project"
    root.mkdir()
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    (root / "src").mkdir()  # the package itself is the installed (editable) one
    raw = root / "data" / "01_raw"
    raw.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "data/01_raw/python_docs.jsonl", raw / "python_docs.jsonl")
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


@pytest.fixture(scope="module")
def default_run(project):
    root, client = project
    _run(root)
    return root, client


def test_default_run_trains_saves_and_registers_the_base_model(default_run):
    root, client = default_run
    versions = _versions(root / "data/06_models/debug/base_lm")
    assert len(versions) == 1
    saved = versions[0] / "base_lm"
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()

    registration = json.loads((root / "data/08_reporting/base_model_registration.json").read_text())
    assert registration["registered"] is True
    assert [str(v.version) for v in client.search_model_versions("name='base_lm'")] == ["1"]
    run = client.get_run(registration["run_id"])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) >= 2
    assert run.data.params["pretrain.model.preset"] == "debug"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"pretrain_loss_curve.png", "pretrain_config.json", "tokenizer"} <= artifacts


def test_default_run_evaluates_every_configuration_and_writes_the_seed_outputs(default_run):
    root, client = default_run
    results = json.loads(
        (root / "data/07_model_output/switchable_precision_results.json").read_text()
    )
    names = [c["name"] for c in results["configurations"]]
    assert names[:4] == ["uniform_2bit", "uniform_4bit", "uniform_8bit", "fp"]
    assert {"attn_high_mlp_low", "attn_low_mlp_high", "random_0", "random_1"} <= set(names)
    for configuration in results["configurations"]:
        for key in ("perplexity", "effective_bits", "compression_ratio", "tokens_per_s"):
            assert configuration[key] is not None and configuration[key] > 0, (configuration, key)
    by_name = {c["name"]: c for c in results["configurations"]}
    assert by_name["uniform_2bit"]["effective_bits"] < by_name["uniform_4bit"]["effective_bits"]
    assert by_name["uniform_8bit"]["speed_kind"] == "packed_int8"
    assert by_name["uniform_4bit"]["speed_kind"] == "packed_int4"
    assert by_name["uniform_2bit"]["speed_kind"] == "simulated"

    pareto = pd.read_parquet(root / "data/08_reporting/switchable_pareto.parquet")
    assert len(pareto) >= 1 and (pareto["pareto_bits"] | pareto["pareto_speed"]).all()
    assert set(pareto["name"]) <= set(names)
    assert (root / "data/08_reporting/switchable_pareto.png").stat().st_size > 1000

    summary = json.loads((root / "data/08_reporting/switchable_training_summary.json").read_text())
    assert summary["steps_per_width"] == {"8bit": 12, "4bit": 12, "2bit": 12}  # joint, 12 steps

    registration = json.loads((root / "data/08_reporting/switchable_registration.json").read_text())
    assert registration["registered"] is True
    version = client.get_model_version("switchable_lm", registration["version"])
    assert version.tags["pareto_configurations"] == ",".join(registration["pareto_configurations"])
    assert len(_versions(root / "data/06_models/debug/switchable_lm")) == 1


def test_switchable_pipeline_reuses_the_saved_base_model(default_run):
    root, client = default_run
    _run(root, "switchable")
    assert len(_versions(root / "data/06_models/debug/base_lm")) == 1, "no duplicate base model"
    assert len(client.search_model_versions("name='base_lm'")) == 1, "reused, not retrained"
    assert len(_versions(root / "data/06_models/debug/switchable_lm")) == 2, "never overwritten"
    assert len(client.search_model_versions("name='switchable_lm'")) == 2


def test_switchable_pipeline_falls_back_to_the_registered_base_model(default_run):
    root, client = default_run
    saved = root / "data/06_models/debug/base_lm"
    shutil.move(saved, root / "base_lm_moved_away")  # no saved base model any more
    _run(root, "switchable")
    assert len(client.search_model_versions("name='base_lm'")) == 1, "reused, not retrained"
    copies = _versions(saved)
    assert len(copies) == 1, "the registered model is saved as a catalog version"
    registered = sorted((root / "base_lm_moved_away").iterdir())[0] / "base_lm"
    copied_weights = load_file(copies[0] / "base_lm/model.safetensors")
    registered_weights = load_file(registered / "model.safetensors")
    assert copied_weights.keys() == registered_weights.keys()
    assert all(torch.equal(copied_weights[k], registered_weights[k]) for k in copied_weights)
    assert len(client.search_model_versions("name='switchable_lm'")) == 3
