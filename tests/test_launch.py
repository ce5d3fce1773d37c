"""`router_pipelines.launch` and the main-process-only rules of `router_pipelines.hooks`.

The slow test runs the debug `pretrain` pipeline under `accelerate launch` with 2 CPU processes
(gloo) in a throw-away copy of the project. Launcher note (accelerate 1.15, see
tests/training/test_trainer_ddp.py): `--cpu --num_processes 2` starts ONE process, so it is
`--multi_gpu` (torchrun) with the launcher's `--cpu`, which keeps it on gloo also where GPUs exist.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from kedro.framework.hooks.manager import _create_hook_manager, _register_hooks_entry_points
from kedro.io import DataCatalog, MemoryDataset
from kedro.pipeline import Node, Pipeline
from kedro.runner import SequentialRunner
from project_copy import copy_project

from router_pipelines import launch
from router_pipelines.hooks import MainProcessOnlyOutputs, is_main_process
from router_pipelines.pipelines.pretrain.nodes import register_base_model
from router_pipelines.pipelines.switchable.nodes import register_switchable

ACCELERATE = Path(sys.executable).parent / "accelerate"
RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
# Over conf/debug, so the numbers asserted below do not depend on it.
TRAINING = {
    "cpu": "true",
    "max_steps": 12,
    "batch_size": 8,
    "eval_steps": 6,
    "save_steps": 12,
    "logging_steps": 4,
}


@pytest.fixture
def rank(monkeypatch):
    """``rank(r)`` makes this process look like global rank ``r`` of a 2-process launch."""
    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def set_rank(value: int) -> None:
        monkeypatch.setenv("RANK", str(value))
        monkeypatch.setenv("WORLD_SIZE", "2")

    return set_rank


def test_arguments_are_read_like_kedro_run():
    args = launch.parse_args(
        [
            "--pipeline", "pretrain",
            "--env", "debug",
            "--params", "pretrain.training.cpu=true,pretrain.training.max_steps=10,data.seed=1",
        ]
    )  # fmt: skip
    assert args.pipelines == ["pretrain"]
    assert args.env == "debug"
    assert args.params == {
        "pretrain": {"training": {"cpu": True, "max_steps": 10}},
        "data": {"seed": 1},
    }
    assert not args.cpu
    defaults = launch.parse_args(["--pipelines", "data_processing,pretrain", "--cpu"])
    assert defaults.pipelines == ["data_processing", "pretrain"]
    assert (defaults.env, defaults.params, defaults.cpu) == (None, {}, True)


def test_a_parameter_without_a_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as stopped:
        launch.parse_args(["--params", "pretrain.training.max_steps"])
    assert stopped.value.code == 2
    assert "must contain a key and a value" in capsys.readouterr().err


def test_the_rank_comes_from_the_launcher_environment(rank, monkeypatch):
    assert is_main_process()  # no launcher: one process
    rank(1)
    assert not is_main_process()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("OMPI_COMM_WORLD_RANK", "0")  # mpirun
    assert is_main_process()


def _writing_pipeline(tmp_path: Path) -> tuple[Pipeline, DataCatalog]:
    catalog = DataCatalog.from_config(
        {
            "source": {"type": "json.JSONDataset", "filepath": str(tmp_path / "source.json")},
            "report": {"type": "json.JSONDataset", "filepath": str(tmp_path / "report.json")},
            "{name}_plot": {"type": "json.JSONDataset", "filepath": str(tmp_path / "{name}.json")},
            "declared_memory": {"type": "MemoryDataset", "copy_mode": "copy"},
        }
    )
    catalog.save("source", {"value": 1})
    pipeline = Pipeline(
        [
            Node(
                lambda source: (source, source, source, source),
                "source",
                ["report", "loss_plot", "declared_memory", "intermediate"],
                name="make",
            ),
            Node(lambda report: report["value"] + 1, "report", "result", name="use"),
        ]
    )
    return pipeline, catalog


def test_other_ranks_keep_every_persisted_output_in_memory(rank, tmp_path):
    rank(1)
    pipeline, catalog = _writing_pipeline(tmp_path)
    MainProcessOnlyOutputs().before_pipeline_run(run_params={}, pipeline=pipeline, catalog=catalog)
    for name in ("report", "loss_plot"):  # declared, and matched by a dataset factory
        assert isinstance(catalog[name], MemoryDataset), name
    assert catalog["declared_memory"]._copy_mode == "copy"  # a declared MemoryDataset stays
    assert catalog.get_type("source").endswith("JSONDataset")  # inputs are read as before

    outputs = SequentialRunner().run(pipeline, catalog)
    assert outputs["result"].load() == 2  # the downstream node got the report in memory
    assert outputs["loss_plot"].load() == {"value": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.json"]


def test_the_main_process_writes_its_outputs(rank, tmp_path):
    rank(0)
    pipeline, catalog = _writing_pipeline(tmp_path)
    MainProcessOnlyOutputs().before_pipeline_run(run_params={}, pipeline=pipeline, catalog=catalog)
    SequentialRunner().run(pipeline, catalog)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loss.json", "report.json", "source.json"]


def test_other_ranks_register_no_model(rank):
    rank(1)
    skipped = {"registered": False, "reason": "not the main process"}
    assert register_base_model(None, {}, {}) == skipped  # no MLflow run here: it would raise
    assert register_switchable(None, None, {}, {}) == skipped


def test_other_ranks_run_without_the_plugins_that_write(rank):
    import router_pipelines.settings as settings

    def registered_plugins() -> set[str]:
        manager = _create_hook_manager()
        _register_hooks_entry_points(manager, settings.DISABLE_HOOKS_FOR_PLUGINS)
        return {
            dist.project_name.replace("_", "-")
            for plugin, dist in manager.list_plugin_distinfo()
            if manager.is_registered(plugin)
        }

    try:
        assert {"kedro-mlflow", "kedro-viz"} <= registered_plugins()
        assert "kedro-telemetry" not in registered_plugins()
        rank(1)
        importlib.reload(settings)
        assert not registered_plugins() & {"kedro-mlflow", "kedro-viz", "kedro-telemetry"}
    finally:
        os.environ.pop("RANK", None)
        importlib.reload(settings)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def project(tmp_path):
    """conf/, pyproject.toml, .telemetry and the corpus in tmp (the package is the installed one)."""
    return copy_project(tmp_path / "project")


def _launch_two_processes(project: Path, tmp_path: Path, pipeline: str, params: str) -> str:
    """Run ``pipeline`` on 2 CPU processes (gloo) under accelerate launch; returns the store URI."""
    uri = f"sqlite:///{project / 'mlflow.db'}"
    command = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes", "2",
        "--num_machines", "1",
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "router_pipelines.launch",
        "--pipeline", pipeline,
        "--env", "debug",
        "--params", params,
        "--cpu",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in (*RANK_VARIABLES, "WORLD_SIZE")}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        KEDRO_DISABLE_TELEMETRY="1",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        HF_HOME=str(tmp_path / "hf_home"),
    )
    done = subprocess.run(
        command, cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return uri


@pytest.mark.slow
def test_joint_switchable_training_runs_under_ddp(project, tmp_path):
    """`joint` runs every width before one backward: DDP must see one forward for it."""
    params = "pretrain.training.cpu=true,switchable.training.cpu=true"
    _launch_two_processes(project, tmp_path, "switchable", params)
    reports = project / "data/08_reporting/debug"
    summary = json.loads((reports / "switchable/training_summary.json").read_text())
    report = json.loads((reports / "data_processing/data_report.json").read_text())
    assert summary["strategy"] == "joint"
    steps = summary["global_step"]
    assert summary["steps_per_width"] == {"2bit": steps, "4bit": steps, "8bit": steps}
    assert summary["tokens_seen"] == steps * 2 * 8 * report["seq_len"]  # 2 processes x batch 8
    models = project / "data/06_models/debug"
    assert len([p for p in (models / "switchable").iterdir() if not p.name.startswith(".")]) == 1


@pytest.mark.slow
def test_two_processes_train_once_and_only_the_main_process_writes(project, tmp_path):
    params = ",".join(f"pretrain.training.{k}={v}" for k, v in TRAINING.items())
    uri = _launch_two_processes(project, tmp_path, "pretrain", params)

    models = project / "data/06_models/debug"
    versions = [p for p in (models / "pretrain").iterdir() if not p.name.startswith(".")]
    assert len(versions) == 1, versions
    assert (versions[0] / "pretrain" / "model.safetensors").is_file()
    cache = project / "data/04_feature/token_cache_debug"
    assert len(list(cache.iterdir())) == 1, "one cache entry, no staging folder left behind"

    # Trained together: each step saw 2 processes x batch_size rows of seq_len tokens.
    reports = project / "data/08_reporting/debug"
    summary = json.loads((reports / "pretrain/training_summary.json").read_text())
    report = json.loads((reports / "data_processing/data_report.json").read_text())
    assert summary["global_step"] == TRAINING["max_steps"]
    steps, batch_size = TRAINING["max_steps"], TRAINING["batch_size"]
    assert summary["tokens_seen"] == steps * 2 * batch_size * report["seq_len"]
    (checkpoint,) = (models / "checkpoints/pretrain").glob("*/checkpoint-12")  # one run folder
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["global_batch_size"] == 2 * batch_size
    assert (checkpoint / "random_states_1.pkl").is_file()

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.get_experiment_by_name("router_pipelines_debug")  # conf/debug/mlflow.yml
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run_id = runs[0].info.run_id
    model_versions = client.search_model_versions("name='base_lm_debug'")
    assert [(str(v.version), v.run_id) for v in model_versions] == [("1", run_id)]
    # one point per logging_steps, logged by the main process only
    train_loss = client.get_metric_history(run_id, "pretrain/train_loss")
    assert sorted(m.step for m in train_loss) == [4, 8, 12]
