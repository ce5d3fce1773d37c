"""Kedro-Viz and the MLflow UI as a user sees them: servers on 127.0.0.1 (free ports, under the
network guard), their APIs, and the pages rendered by headless Chromium (Debian's package,
`make browser`). Screenshots and DOMs land in build/browser/ (a CI artifact)."""

from __future__ import annotations

import base64
import json
import re

import pytest

from operations.support import described, free_port, get_json, render, server, user_environment
from router_pipelines.terminal import UI_TRAINING_MODE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def viz(debug_run):
    """`kedro viz run --env debug` in the debug run's project; yields (base url, guard log)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    # --env debug: the catalog of the debug run, so the previews find its files
    args = [
        "-m", "kedro", "viz", "run", "--env", "debug",
        "--host", "127.0.0.1", "--port", str(port), "--no-browser",
    ]  # fmt: skip
    with server(args, debug_run.root, f"{url}/api/main") as log:
        yield url, log


@pytest.fixture(scope="module")
def pipelines():
    from router_pipelines.pipeline_registry import register_pipelines

    return register_pipelines()


def test_viz_api_has_every_pipeline_and_node(viz, pipelines):
    url, _ = viz
    main = get_json(f"{url}/api/main")
    assert {p["id"] for p in main["pipelines"]} == set(pipelines)
    for name in ("__default__", *[n for n in pipelines if n != "__default__"][:3]):
        shown = get_json(f"{url}/api/pipelines/{name}")
        tasks = {n["name"] for n in shown["nodes"] if n["type"] == "task"}
        expected = {node.name.rsplit(".", 1)[-1] for node in pipelines[name].nodes}
        assert expected <= tasks, (name, expected - tasks)
    # one collapsible namespace per family, datasets typed
    default = get_json(f"{url}/api/pipelines/__default__")
    assert {"data_processing", "pretrain", "switchable"} <= set(default["modular_pipelines"])
    kinds = {n["name"]: n.get("dataset_type") for n in default["nodes"] if n["type"] == "data"}
    assert kinds["pretrain.model"].endswith("PretrainedModelDataset")
    assert kinds["switchable.promotion"].endswith("AtomicJSONDataset")


def test_viz_previews_plots_tables_reports_and_models(viz):
    """A data node's panel in Kedro-Viz (``/api/nodes/<id>``) previews what the debug run
    wrote: a PNG plot as an image, a parquet table as a table, a JSON report and a saved model
    as JSON (the model from its JSON files, without loading weights)."""
    url, _ = viz
    default = get_json(f"{url}/api/pipelines/__default__")
    ids = {n["name"]: n["id"] for n in default["nodes"] if n["type"] == "data"}

    def preview(name: str) -> tuple[str, object]:
        node = get_json(f"{url}/api/nodes/{ids[name]}")
        return node.get("preview_type"), node.get("preview")

    kind, image = preview("switchable.pareto_plot")
    assert kind == "ImagePreview" and base64.b64decode(image)[:4] == b"\x89PNG"
    kind, table = preview("switchable.evaluation")
    assert kind == "TablePreview", kind
    assert {"name", "perplexity", "effective_bits"} <= set(table["columns"])
    assert len(table["data"]) == min(20, len(table["index"])) > 0
    kind, report = preview("pretrain.training_summary")
    assert kind == "JSONPreview" and "validation_perplexity" in json.loads(report)
    kind, model = preview("pretrain.model")
    assert kind == "JSONPreview", kind
    model = json.loads(model)
    assert model["family"] == "causal_lm" and model["training"]["origin"] == "train"
    assert "model.safetensors" in model["files"]
    kind, versions = preview("pretrain.saved_models")
    assert kind == "TablePreview" and versions["columns"][:3] == ["version", "family", "origin"]
    assert [row[1:3] for row in versions["data"]] == [["causal_lm", "train"]], "one saved model"


def test_viz_reports_its_own_version_without_asking_the_network(viz):
    url, log = viz
    from kedro_viz import __version__

    assert get_json(f"{url}/api/version") == {
        "installed": __version__,
        "is_outdated": False,
        "latest": __version__,  # offline, an unpatched lookup answers "None"
    }
    from test_network_guard import attempts

    found = attempts(log)
    assert not found, f"Kedro-Viz reached for the network: {described(found)}"


@pytest.mark.browser
def test_viz_renders_the_default_pipeline_in_chromium(viz, pipelines, tmp_path):
    url, _ = viz
    dom = render(f"{url}/?pid=__default__&expandAllPipelines=true", "kedro-viz", tmp_path)
    labels = set(re.findall(r'class="pipeline-node__text"[^>]*>([^<]+)<', dom))
    expected = {node.name.rsplit(".", 1)[-1] for node in pipelines["__default__"].nodes}
    assert expected <= labels, expected - labels
    assert "Kedro-Viz None" not in dom


@pytest.fixture(scope="module")
def mlflow_ui(debug_run):
    """`make mlflow-ui`'s command over the debug run's store (with the Makefile's switches)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    args = [
        "-m", "mlflow", "ui",
        "--backend-store-uri", debug_run.uri,
        "--host", "127.0.0.1",
        "--port", str(port),
    ]  # fmt: skip
    env = {
        **user_environment(),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    }
    with server(args, debug_run.root, f"{url}/health", env=env) as log:
        yield url, log


@pytest.mark.browser
def test_mlflow_ui_lists_the_run_and_the_registered_models(mlflow_ui, debug_run, tmp_path):
    url, log = mlflow_ui
    client = debug_run.client()
    experiment = client.get_experiment_by_name("router_pipelines_debug")
    (run,) = client.search_runs([experiment.experiment_id], order_by=["start_time ASC"])[:1]
    # What `make mlflow-ui` and the run's summary link to: the UI in its model-training mode.
    experiments = render(f"{url}/#/experiments{UI_TRAINING_MODE}", "mlflow-experiments", tmp_path)
    assert "router_pipelines_debug" in experiments
    experiment_page = render(
        f"{url}/#/experiments/{experiment.experiment_id}{UI_TRAINING_MODE}", "mlflow-runs", tmp_path
    )
    assert run.info.run_name in experiment_page, "the experiment opens on its runs table"
    assert "Run Name" in experiment_page and "matching run" in experiment_page
    assert "Token Usage" not in experiment_page, "not the GenAI overview of traces"
    models_page = render(f"{url}/#/models", "mlflow-models", tmp_path)
    for name in ("base_lm_debug", "switchable_lm_debug"):
        assert name in models_page
    from test_network_guard import attempts

    assert not attempts(log)


def test_viz_build_writes_the_static_site(debug_run, pipelines):
    """`make viz-build` (`kedro viz build`): the static site with every pipeline's API files."""
    from operations.support import guarded

    result = guarded(["-m", "kedro", "viz", "build"], debug_run.root, debug_run.root / "g.jsonl")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    site = debug_run.root / "build"
    assert (site / "index.html").is_file()
    main = json.loads((site / "api" / "main").read_text())
    assert {p["id"] for p in main["pipelines"]} == set(pipelines)
    assert (site / "api" / "pipelines" / "__default__").is_file()
