"""Atomic JSON / Parquet / Matplotlib datasets: a failed save leaves the previous file."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from kedro.io.core import DatasetError, Version  # noqa: E402
from kedro_datasets.json import JSONDataset  # noqa: E402
from kedro_datasets.pandas import ParquetDataset  # noqa: E402
from kedro_mlflow.io.artifacts import MlflowArtifactDataset  # noqa: E402

from router_pipelines.datasets import (  # noqa: E402
    AtomicJSONDataset,
    AtomicMatplotlibDataset,
    AtomicParquetDataset,
)

UNSERIALISABLE = {"a": 1, "b": object()}  # json.dump writes "a" before failing on "b"
UNCONVERTIBLE = pd.DataFrame({"x": [object(), object()]})  # pyarrow cannot convert it


def _figure(label: str = "x"):
    figure, axis = plt.subplots()
    axis.plot([0, 1], [1, 0], label=label)
    return figure


def _debris(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_the_stock_datasets_do_leave_half_written_files(tmp_path):
    """Why the atomic classes exist (and proof that the tests below can fail)."""
    report = tmp_path / "report.json"
    JSONDataset(filepath=str(report)).save({"a": 1})
    with pytest.raises(DatasetError):
        JSONDataset(filepath=str(report)).save(UNSERIALISABLE)
    assert report.read_text() != '{"a": 1}'  # truncated and half rewritten

    table = tmp_path / "table.parquet"
    ParquetDataset(filepath=str(table)).save(pd.DataFrame({"x": [1, 2]}))
    with pytest.raises(DatasetError):
        ParquetDataset(filepath=str(table)).save(UNCONVERTIBLE)
    with pytest.raises(Exception):  # noqa: B017 - whatever pyarrow says about a broken file
        pd.read_parquet(table)


def test_json_round_trip_and_failed_save_keeps_the_previous_file(tmp_path):
    dataset = AtomicJSONDataset(filepath=str(tmp_path / "report.json"), save_args={"indent": 2})
    dataset.save({"a": 1})
    assert dataset.load() == {"a": 1}
    assert (tmp_path / "report.json").read_text() == '{\n  "a": 1\n}'  # save_args honoured
    with pytest.raises(DatasetError, match="not JSON serializable"):
        dataset.save(UNSERIALISABLE)
    assert dataset.load() == {"a": 1}
    assert _debris(tmp_path) == []


def test_parquet_round_trip_and_failed_save_keeps_the_previous_file(tmp_path):
    dataset = AtomicParquetDataset(filepath=str(tmp_path / "nested" / "table.parquet"))
    frame = pd.DataFrame({"name": ["fp", "uniform_4bit"], "bits": [32.0, 4.0]})
    dataset.save(frame)
    pd.testing.assert_frame_equal(dataset.load(), frame)
    with pytest.raises(DatasetError):
        dataset.save(UNCONVERTIBLE)
    pd.testing.assert_frame_equal(dataset.load(), frame)
    assert _debris(tmp_path / "nested") == []


def test_parquet_refuses_partition_cols(tmp_path):
    dataset = AtomicParquetDataset(
        filepath=str(tmp_path / "t.parquet"), save_args={"partition_cols": ["x"]}
    )
    with pytest.raises(DatasetError, match="partition_cols"):
        dataset.save(pd.DataFrame({"x": [1]}))


def test_plot_is_written_atomically_and_only_its_figure_is_closed(tmp_path):
    target = tmp_path / "curve.png"
    dataset = AtomicMatplotlibDataset(filepath=str(target), save_args={"dpi": 50})
    other = _figure("still open")
    saved = _figure()
    dataset.save(saved)
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plt.fignum_exists(saved.number), "the saved figure is closed"
    assert plt.fignum_exists(other.number), "other figures are left alone"
    before = target.read_bytes()

    broken = _figure()
    failing = AtomicMatplotlibDataset(filepath=str(target), save_args={"format": "nope"})
    with pytest.raises(DatasetError):
        failing.save(broken)
    assert target.read_bytes() == before
    assert not plt.fignum_exists(broken.number), "closed even when saving fails"
    assert _debris(tmp_path) == []
    plt.close(other)


def test_a_folder_of_plots_is_replaced_whole(tmp_path):
    folder = tmp_path / "plots"
    dataset = AtomicMatplotlibDataset(filepath=str(folder), overwrite=True)
    dataset.save({"a.png": _figure(), "b.png": _figure()})
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "b.png"]
    dataset.save([_figure()])
    assert sorted(p.name for p in folder.iterdir()) == ["0.png"]
    assert _debris(tmp_path) == []
    assert plt.get_fignums() == []


def test_versioned_json_writes_a_new_version(tmp_path):
    path = tmp_path / "report.json"
    AtomicJSONDataset(filepath=str(path), version=Version(None, "v1")).save({"v": 1})
    AtomicJSONDataset(filepath=str(path), version=Version(None, "v2")).save({"v": 2})
    assert json.loads((path / "v1" / "report.json").read_text()) == {"v": 1}
    assert AtomicJSONDataset(filepath=str(path), version=Version(None, None)).load() == {"v": 2}


def test_remote_file_systems_keep_the_stock_write(tmp_path):
    dataset = AtomicJSONDataset(filepath="memory://reports/report.json")
    dataset.save({"remote": True})
    assert dataset.load() == {"remote": True}


@pytest.mark.parametrize(
    ("dataset", "filename", "data"),
    [
        ("router_pipelines.datasets.AtomicJSONDataset", "report.json", {"a": 1}),
        ("router_pipelines.datasets.AtomicParquetDataset", "table.parquet", None),
        ("router_pipelines.datasets.AtomicMatplotlibDataset", "plot.png", None),
    ],
)
def test_each_works_under_mlflow_artifact_dataset(mlflow_store, tmp_path, dataset, filename, data):
    if filename.endswith(".parquet"):
        data = pd.DataFrame({"x": [1, 2]})
    elif filename.endswith(".png"):
        data = _figure()
    wrapped = MlflowArtifactDataset(
        dataset={"type": dataset, "filepath": str(tmp_path / filename)}, artifact_path="reports"
    )
    with mlflow.start_run() as run:
        wrapped.save(data)
    assert (tmp_path / filename).is_file()
    artifacts = mlflow.MlflowClient().list_artifacts(run.info.run_id, "reports")
    assert [a.path for a in artifacts] == [f"reports/{filename}"]
    local = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=f"reports/{filename}"
    )
    assert Path(local).read_bytes() == (tmp_path / filename).read_bytes()
    if not filename.endswith(".png"):
        loaded = wrapped.load()
        assert loaded == data if isinstance(data, dict) else loaded.equals(data)
    assert _debris(tmp_path) == []


def test_wrapped_failed_save_keeps_the_file_and_logs_nothing(mlflow_store, tmp_path):
    wrapped = MlflowArtifactDataset(
        dataset={
            "type": "router_pipelines.datasets.AtomicJSONDataset",
            "filepath": str(tmp_path / "report.json"),
        }
    )
    with mlflow.start_run() as run:
        wrapped.save({"a": 1})
        with pytest.raises(DatasetError):
            wrapped.save(UNSERIALISABLE)
    assert json.loads((tmp_path / "report.json").read_text()) == {"a": 1}
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="report.json")
    assert json.loads(Path(local).read_text()) == {"a": 1}
