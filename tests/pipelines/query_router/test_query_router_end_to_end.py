"""`kedro run --env=debug --pipeline=query_router` in a throw-away project copy, then both
registered pyfuncs loaded and called as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from project_copy import debug_run

pytestmark = pytest.mark.slow

REPORTS = Path("data/08_reporting/debug/query_router")
OUTPUT = Path("data/07_model_output/debug/query_router")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e_query_router") / "project"
    with debug_run(root, "query_router") as client:
        yield root, client


def test_run_writes_outcomes_curves_and_registers_both_models(finished_run):
    root, client = finished_run
    outcomes = pd.read_parquet(root / OUTPUT / "outcomes.parquet")
    assert len(outcomes) == 300  # conf/debug: max_queries
    for rung in ("ladder_lm", "4bit", "8bit"):  # conf/debug: a 1 x 32 LM below 4 and 8 bits
        columns = {f"{kind}_{rung}" for kind in ("quality", "seconds", "bytes", "prompt_loss")}
        assert columns <= set(outcomes.columns)
    assert (outcomes["bytes_ladder_lm"] < outcomes["bytes_4bit"]).all()
    ladder_lm = json.loads((root / REPORTS / "ladder_lm_summary.json").read_text())
    assert ladder_lm["origin"] == "train" and ladder_lm["global_step"] == 30
    assert outcomes["label"].between(1, 5).all() and outcomes["question"].str.len().min() > 0
    curves = pd.read_parquet(root / OUTPUT / "evaluation.parquet")
    assert {
        "router",
        "random",
        "oracle",
        "uncertainty",
        "prompt_gap",
        "ladder_router",
        "ladder_router_lambda",
        "ladder_oracle",
    } == set(curves["router"])
    assert (root / REPORTS / "routing_curves.png").stat().st_size > 1000
    document = json.loads((root / REPORTS / "routing_metrics.json").read_text())
    metrics = document["metrics"]
    assert metrics["oracle_apgr"] >= metrics["random_apgr"]
    registration = json.loads((root / REPORTS / "registration.json").read_text())
    assert registration["registered"] and registration["name"] == "query_router_debug"
    assert set(registration["metrics"]) == {
        "router_apgr",
        "router_cpt_50",
        "oracle_apgr",
        "oracle_cpt_50",
    }
    version = client.get_model_version("query_router_debug", registration["version"])
    assert float(version.tags["router_apgr"]) == pytest.approx(metrics["router_apgr"])
    assert registration["routed_lm"]["name"] == "routed_lm_debug"
    run = client.get_run(registration["run_id"])
    assert "query_router/router_apgr" in run.data.metrics
    assert "query_router/train_loss" in run.data.metrics
    # the ladder LM's training keeps its own metric names beside the router's
    assert "query_router/ladder_lm_train_loss" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(registration["run_id"], "query_router")}
    assert "query_router/ladder_lm_summary.json" in artifacts


def test_the_first_registered_router_is_the_champion(finished_run):
    root, client = finished_run
    registration = json.loads((root / REPORTS / "registration.json").read_text())
    promotion = json.loads((root / REPORTS / "promotion.json").read_text())
    assert promotion["promoted"] is True and promotion["alias"] == "champion"
    aliases = client.get_registered_model("query_router_debug").aliases
    assert {k: str(v) for k, v in aliases.items()} == {
        "champion": str(registration["version"]),
        "challenger": str(registration["version"]),
    }
    # the routed LM registered beside it follows: models:/routed_lm_debug@champion
    routed = registration["routed_lm"]
    aliases = client.get_registered_model("routed_lm_debug").aliases
    assert {k: str(v) for k, v in aliases.items()} == {
        "champion": str(routed["version"]),
        "challenger": str(routed["version"]),
    }
    assert promotion["companions"] == [
        {"name": "routed_lm_debug", "version": str(routed["version"]), "alias": "champion"}
    ]


def test_registered_query_router_predicts_scores_and_routes_over_the_ladder(finished_run):
    router = mlflow.pyfunc.load_model("models:/query_router_debug/latest")
    table = router.predict(["The json module", "def f(x):"])
    assert list(table.columns)[:5] == ["p_1", "p_2", "p_3", "p_4", "p_5"]
    sums = table[["p_1", "p_2", "p_3", "p_4", "p_5"]].sum(axis=1)
    assert sums.round(5).tolist() == [1.0, 1.0]
    assert (table["p_strong"] - (1 - table["p_4"] - table["p_5"])).abs().max() < 1e-6
    # conf/debug routes over the ladder LM, 4 and 8 bits: quality - lambda x cost picks the rung
    assert set(table["model"]) <= {"ladder_lm", "4bit", "8bit"}
    cheapest = router.predict(["The json module"], params={"lambda": 1.0e12})
    assert cheapest["model"].tolist() == ["ladder_lm"] and cheapest["route"].tolist() == ["cheap"]


def test_registered_routed_lm_answers_with_the_chosen_rung_and_its_cost(finished_run):
    router = mlflow.pyfunc.load_model("models:/query_router_debug/latest")
    lm = mlflow.pyfunc.load_model("models:/routed_lm_debug/latest")
    queries = ["The json module", "def f(x):", "import os"]
    table = lm.predict(queries, params={"max_new_tokens": 4, "lambda": 0.0})
    routes = router.predict(queries, params={"lambda": 0.0})
    assert table["model"].tolist() == routes["model"].tolist()
    assert all(isinstance(answer, str) for answer in table["answer"])
    assert (table["seconds"] > 0).all()
    cheap = lm.predict(["The json module"], params={"max_new_tokens": 4, "lambda": 1.0e12})
    assert cheap["model"].tolist() == ["ladder_lm"] and cheap["bytes"][0] > 0
    # the ladder LM answers from its own weights (fp16 bytes), below the 8-bit model's
    outcomes = pd.read_parquet(finished_run[0] / OUTPUT / "outcomes.parquet")
    per_token = outcomes["bytes_ladder_lm"].iloc[0] / 16  # conf/debug: 16 reference tokens
    new_tokens = cheap["bytes"][0] / per_token
    assert new_tokens == pytest.approx(round(new_tokens)) and 1 <= round(new_tokens) <= 4


def test_an_unchanged_second_run_reuses_the_router(finished_run):
    """The same project run again: the switchable model, the ladder LM and the router are
    reused (same identity), nothing new is registered, and the champion stays."""
    from kedro.framework.session import KedroSession

    root, client = finished_run
    first = json.loads((root / REPORTS / "training_summary.json").read_text())
    with KedroSession.create(project_path=root, env="debug") as session:
        session.run(pipeline_names=["query_router"])
    summary = json.loads((root / REPORTS / "training_summary.json").read_text())
    assert summary["origin"] == "catalog" and summary["fingerprint"] == first["fingerprint"]
    assert (
        json.loads((root / REPORTS / "ladder_lm_summary.json").read_text())["origin"] == "catalog"
    )
    registration = json.loads((root / REPORTS / "registration.json").read_text())
    assert registration["registered"] is False
    assert len(client.search_model_versions("name='query_router_debug'")) == 1
