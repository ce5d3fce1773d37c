"""What the debug run leaves in MLflow: an experiment of its own, a comparable run, versions
with descriptions, metrics, an input example and aliases."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(debug_run):
    client = debug_run.client()
    experiment = client.get_experiment_by_name("router_pipelines_debug")
    assert experiment is not None, "debug runs go to their own experiment"
    assert client.get_experiment_by_name("router_pipelines") is None
    (first,) = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])[:1]
    return client, experiment, first


def test_the_experiment_opens_on_training_runs_and_says_what_it_is(run):
    _, experiment, _ = run
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "Debug-sized runs" in experiment.tags["mlflow.note.content"]


def test_the_run_has_a_readable_name_and_the_tags_a_comparison_needs(run, debug_run):
    _, _, first = run
    tags = first.data.tags
    assert first.info.run_name.startswith("__default__ [debug]")
    assert "pretrain:debug" in first.info.run_name
    assert tags["pipeline"] == "__default__" and tags["env"] == "debug"
    families = tags["family"].split(",")  # the namespaces, in the order they first ran
    assert families[:2] == ["data_processing", "pretrain"]
    assert sorted(families[2:]) == ["precision_router", "query_router", "switchable"]
    assert tags["kedro_command"] == "kedro run --env=debug"
    assert tags["runner"] == "SequentialRunner"
    assert re.fullmatch(r"sha256:[0-9a-f]{16}", tags["data_fingerprint"])
    assert tags["base_model"] == "base_lm_debug/1"
    assert first.data.params["pretrain.model.preset"] == "debug"  # parameters flattened


def test_evaluation_is_one_table_plus_headline_metrics(run):
    client, _, first = run
    metrics = set(first.data.metrics)
    assert not [m for m in metrics if "/eval/" in m], "no single-point metric per configuration"
    assert {"switchable/lowest_width_perplexity", "switchable/fp_perplexity"} <= metrics
    assert "switchable/train_loss_per_width" in metrics  # comparable to eval_loss (see loss.py)
    path = client.download_artifacts(first.info.run_id, "switchable/evaluation_table.json")
    table = json.loads(Path(path).read_text())
    names = [row[table["columns"].index("name")] for row in table["data"]]
    assert names[:4] == ["uniform_2bit", "uniform_4bit", "uniform_8bit", "fp"]
    assert {"perplexity", "effective_bits", "tokens_per_s"} <= set(table["columns"])


def test_each_version_has_description_metrics_input_example_and_source_run(
    run, debug_run, monkeypatch
):
    import mlflow

    client, _, first = run
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", debug_run.uri)
    for name, metric, namespace in (
        ("base_lm_debug", "validation_perplexity", "pretrain"),
        ("switchable_lm_debug", "lowest_width_perplexity", "switchable"),
    ):
        version = client.get_model_version(name, "1")
        assert version.run_id == first.info.run_id
        assert metric in version.description and first.info.run_id in version.description
        assert float(version.tags[metric]) > 1
        assert client.get_registered_model(name).description
        reports = debug_run.root / "data/08_reporting/debug" / namespace
        registration = json.loads((reports / "registration.json").read_text())
        assert registration["version"] == "1" and registration["metrics"][metric] > 1
        model = client.get_logged_model(registration["model_id"])
        linked = {m.key for m in model.metrics}
        assert f"{namespace}/{metric}" in linked
        assert all(key.startswith(f"{namespace}/") for key in linked), linked
        info = mlflow.models.get_model_info(f"models:/{registration['model_id']}")
        assert info.saved_input_example_info is not None, name


def test_the_readme_snippet_loads_the_champion_from_any_folder(debug_run, tmp_path):
    """Run elsewhere with the store's absolute URI, it loads and generates, and leaves no
    stray mlflow.db behind in the folder it ran from."""
    code = textwrap.dedent(
        f"""
        import mlflow
        mlflow.set_tracking_uri({debug_run.uri!r})
        model = mlflow.pyfunc.load_model("models:/switchable_lm_debug@champion")
        print(model.predict(["def add(a, b):"], params={{"max_new_tokens": 4, "bits": "4"}}))
        """
    )
    # A user's shell: no MLFLOW_REGISTRY_URI that an earlier test's mlflow.set_registry_uri()
    # left in os.environ (MLflow exports it for subprocesses), which would win over the snippet.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_REGISTRY_URI")}
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (continuation,) = ast.literal_eval(result.stdout.strip().splitlines()[-1])
    assert isinstance(continuation, str)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
