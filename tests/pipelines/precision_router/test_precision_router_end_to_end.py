"""`kedro run --env=debug --pipelines=precision_router` in a throw-away project copy (data →
base LM → switchable model → router → evaluation → registry), then the registered pyfunc
loaded and called as a user would."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from project_copy import debug_run

pytestmark = pytest.mark.slow

REPORTS = Path("data/08_reporting/debug/precision_router")
OUTPUT = Path("data/07_model_output/debug/precision_router")
NAME = "precision_router_debug"  # conf/debug/parameters_precision_router.yml


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e_precision_router") / "project"
    with debug_run(root, "precision_router") as client:
        yield root, client


def test_run_trains_evaluates_and_registers_the_router(finished_run):
    root, client = finished_run
    table = pd.read_parquet(root / OUTPUT / "evaluation.parquet").set_index("name")
    assert {
        "router_b3",
        "router_b5",
        "static_exact_b3",
        "static_greedy_b5",
        "uniform_2bit",
        "fp",
    } <= set(table.index)
    assert table["perplexity"].notna().all() and (table["perplexity"] > 1).all()
    history = json.loads((root / OUTPUT / "training_history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]  # conf/debug: num_epochs
    assert (root / REPORTS / "pareto.png").stat().st_size > 1000
    results = json.loads((root / OUTPUT / "router_results.json").read_text())
    assert [e["budget"] for e in results["per_budget"]] == [3.0, 5.0]

    registration = json.loads((root / REPORTS / "registration.json").read_text())
    assert registration["registered"] and registration["name"] == NAME
    version = client.get_model_version(NAME, registration["version"])
    # the standalone pipeline trains the switchable model without registering it: the router
    # references it by fingerprint and saved folder (by registry version once it is registered)
    summary = json.loads((root / REPORTS / "training_summary.json").read_text())
    assert version.tags["quantized_model_uri"] == "not registered"
    assert version.tags["quantized_fingerprint"] == summary["quantized_fingerprint"]
    assert "debug/switchable/" in version.tags["quantized_path"]
    assert float(version.tags["router_b3_perplexity"]) == pytest.approx(
        table.loc["router_b3", "perplexity"], rel=1e-5
    )
    run = client.get_run(registration["run_id"])
    steps = client.get_metric_history(run.info.run_id, "precision_router/train_avg_precision")
    assert [m.step for m in steps] == list(range(1, 9))  # logged every step
    assert "precision_router/headline/router_b3_mean_bits" in run.data.metrics
    assert not [m for m in run.data.metrics if "/eval/" in m], "rows are the table, not metrics"
    # the first registered version is promoted (promotion.rules.precision_router)
    promotion = json.loads((root / REPORTS / "promotion.json").read_text())
    assert promotion["promoted"] and promotion["alias"] == "champion", promotion
    aliases = {k: str(v) for k, v in client.get_registered_model(NAME).aliases.items()}
    assert aliases == {
        "champion": str(registration["version"]),
        "challenger": str(registration["version"]),
    }
    # the seed's per-epoch router checkpoints, by name
    run_dir = Path(summary["run_dir"])
    run_dir = run_dir if run_dir.is_absolute() else root / run_dir
    assert sorted(p.name for p in run_dir.glob("router_checkpoint_epoch_*")) == [
        "router_checkpoint_epoch_1",
        "router_checkpoint_epoch_2",
    ]
    assert "budget_router_b3" in table.index  # a router per budget from the exact allocation


def test_registered_pyfunc_returns_text_and_bits_per_layer(finished_run):
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/latest")
    out = model.predict(["The json module", "def"], params={"max_new_tokens": 5})
    assert list(out.columns) == ["continuation", "bits_per_layer", "mean_bits"]
    assert len(out) == 2 and out["continuation"].map(lambda s: isinstance(s, str)).all()
    for bits in out["bits_per_layer"]:
        layers = json.loads(bits)
        # conf/base routes per token: a layer's bits are the mean over the prompt and new tokens
        assert len(layers) == 2 and all(2 <= b <= 8 for b in layers)
    cheap = model.predict(["The json module"], params={"max_new_tokens": 3, "price": 1e6})
    assert json.loads(cheap["bits_per_layer"][0]) == [2, 2]  # a huge price: the lowest width
