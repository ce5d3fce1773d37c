"""`kedro run --env=debug --pipelines=memory` end to end, in a throw-away copy of the project:
base LM → chat tokens → memory adapter → evaluation → registered chat pyfunc."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from project_copy import debug_run

from router_pipelines.models.bundle import load_bundle

pytestmark = pytest.mark.slow

MODELS = Path("data/06_models/debug")
REPORTS = Path("data/08_reporting/debug")


@pytest.fixture(scope="module")
def memory_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("memory_e2e") / "project"
    with debug_run(root, "memory") as client:
        yield root, client


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _only_version(folder: Path) -> Path:
    versions = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    assert len(versions) == 1
    return versions[0] / folder.name


def test_the_memory_model_is_trained_on_a_frozen_base_and_saved(memory_run):
    root, _ = memory_run
    memory = load_bundle(_only_version(root / MODELS / "memory"))
    base = load_bundle(_only_version(root / MODELS / "pretrain"))
    assert memory.family == "memory" and memory.metadata["training"]["global_step"] == 20
    base_weights = base.model.state_dict()
    for name, tensor in memory.model.base.state_dict().items():
        assert torch.equal(tensor, base_weights[name]), name  # the frozen base is bit-identical
    assert memory.model.layer_indices == [1]
    assert any(p.abs().sum() > 0 for p in memory.model.memory["layers"]["1"].o_proj.parameters())
    summary = _json(root / REPORTS / "memory/training_summary.json")
    assert summary["trainable_parameters"] == summary["memory_parameters"] > 0
    assert summary["num_chapters"] == 4 and summary["mean_step_time_s"] > 0


def test_evaluation_compares_base_and_memory_on_text_and_chat(memory_run):
    root, _ = memory_run
    frame = pd.read_parquet(root / "data/07_model_output/debug/memory/evaluation.parquet")
    assert sorted(zip(frame["model"], frame["split"], strict=True)) == [
        ("base", "chat"),
        ("base", "text"),
        ("memory", "chat"),
        ("memory", "text"),
    ]
    summary = _json(root / REPORTS / "memory/evaluation_summary.json")
    rows = frame.set_index(["model", "split"])
    assert summary["chat_validation_loss"] == pytest.approx(rows.loc[("memory", "chat"), "loss"])
    assert summary["forgetting"] == pytest.approx(
        rows.loc[("memory", "text"), "loss"] - rows.loc[("base", "text"), "loss"]
    )
    assert 0.0 <= summary["utilisation_entropy"] <= 1.0
    assert sum(summary["chapter_counts"][0]) > 0
    assert (root / REPORTS / "memory/chapter_usage.png").stat().st_size > 0
    report = _json(root / REPORTS / "memory/chat_data_report.json")
    assert report["mode"] == "instruction"
    assert 0 < report["train_supervised_tokens"] < report["train_tokens"]  # assistant only


def test_step_metrics_usage_plots_and_the_registered_chat_model(memory_run):
    root, client = memory_run
    registration = _json(root / REPORTS / "memory/registration.json")
    assert registration["registered"] is True and registration["name"] == "memory_lm_debug"
    run = client.get_run(registration["run_id"])
    for key in (
        "memory/train_ce",
        "memory/train_router_aux_loss",
        "memory/train_load_balance",
        "memory/train_z_loss",
        "memory/lr_memory",
        "memory/grad_norm",
        "memory/step_time_s",
        "memory/eval_chat_loss",
        "memory/eval_text_loss",
        "memory/eval_utilisation_entropy",
        "memory/eval_dead_chapters",
        "memory/eval_top1_share",
        "memory/forgetting",
    ):
        assert key in run.data.metrics, key
    artifacts = [
        a.path for a in client.list_artifacts(registration["run_id"], "memory/chapter_usage")
    ]
    assert artifacts == [
        "memory/chapter_usage/step_000010.png",
        "memory/chapter_usage/step_000020.png",
    ]
    version = client.get_model_version("memory_lm_debug", registration["version"])
    assert float(version.tags["utilisation_entropy"]) == pytest.approx(
        registration["metrics"]["utilisation_entropy"]
    )
    assert (
        float(version.tags["trainable_parameters"])
        == registration["metrics"]["trainable_parameters"]
    )
    # the first version of memory_lm_debug is the champion, measured on the chat split
    promotion = _json(root / REPORTS / "memory/promotion.json")
    assert promotion["promoted"] is True and promotion["alias"] == "champion"
    aliases = client.get_registered_model("memory_lm_debug").aliases
    assert {k: str(v) for k, v in aliases.items()} == {
        "champion": str(registration["version"]),
        "challenger": str(registration["version"]),
    }
    chat_report = _json(root / REPORTS / "memory/chat_data_report.json")
    assert version.tags["held_out_data"].startswith(chat_report["fingerprint"])
    chat = mlflow.pyfunc.load_model(registration["model_uri"])
    replies = chat.predict(["What does json.dumps do?"], params={"max_new_tokens": 5})
    assert len(replies) == 1 and isinstance(replies[0], str)
