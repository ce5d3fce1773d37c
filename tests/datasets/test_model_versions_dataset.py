"""ModelVersionsDataset: every complete saved version, newest first, weights read on demand."""

from __future__ import annotations

import time

import pytest
import torch
from kedro.io.core import DatasetError, Version

from router_pipelines.datasets import ModelVersionsDataset, PretrainedModelDataset


def _save(path, bundle, **metadata):
    bundle.metadata = metadata
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)
    time.sleep(0.01)  # versions are timestamps


@pytest.fixture
def saved(tmp_path, bundle):
    """Two complete versions (run 1, run 2) and the debris of interrupted saves."""
    path = tmp_path / "base_lm"
    _save(path, bundle, run=1)
    with torch.no_grad():
        bundle.model.transformer.wte.weight.add_(1.0)
    _save(path, bundle, run=2)
    (path / ".tmp-base_lm-123-abcd").mkdir()  # a killed unversioned save
    (path / "9999-killed" / ".tmp-base_lm-1-x").mkdir(parents=True)  # a killed versioned save
    only_config = path / "9998-no-metadata" / "base_lm"
    only_config.mkdir(parents=True)
    (only_config / "config.json").write_text("{}")
    return path


def test_versions_are_complete_ones_newest_first(saved):
    store = ModelVersionsDataset(str(saved)).load()
    versions = store.versions()
    assert [v.metadata["run"] for v in versions] == [2, 1]
    assert all(v.path == saved / v.version / "base_lm" for v in versions)
    assert versions[0].version > versions[1].version
    assert versions[0].metadata["family"] == "causal_lm"


def test_metadata_is_read_without_the_weights(saved):
    for weights in saved.glob("*/base_lm/model.safetensors"):
        weights.write_bytes(b"not safetensors")  # loading these would fail
    store = ModelVersionsDataset(str(saved)).load()
    assert [v.metadata["run"] for v in store.versions()] == [2, 1]
    with pytest.raises(Exception):  # noqa: B017 - any loader error: the weights are garbage
        store.newest().load()


def test_newest_matching_loads_that_version(saved, bundle):
    store = ModelVersionsDataset(str(saved)).load()
    older = store.newest(where=lambda metadata: metadata.get("run") == 1)
    assert older.metadata["run"] == 1
    loaded = older.load()
    assert loaded.source_dir == str(older.path.resolve())
    assert not torch.equal(loaded.model.transformer.wte.weight, bundle.model.transformer.wte.weight)
    assert store.newest().metadata["run"] == 2
    assert store.newest(where=lambda metadata: False) is None


def test_a_loaded_version_saved_back_writes_nothing(saved):
    before = sorted(p.name for p in saved.iterdir())
    loaded = ModelVersionsDataset(str(saved)).load().newest().load()
    PretrainedModelDataset(str(saved), version=Version(None, None)).save(loaded)
    assert sorted(p.name for p in saved.iterdir()) == before


def test_an_empty_or_missing_folder_has_no_versions(tmp_path):
    store = ModelVersionsDataset(str(tmp_path / "nothing")).load()
    assert store.versions() == []
    assert store.newest() is None
    assert store.path == tmp_path / "nothing"


def test_corrupt_metadata_is_named(saved):
    meta = next(saved.glob("*/base_lm/router_pipelines.json"))
    meta.write_text("[1, 2]")
    with pytest.raises(ValueError, match=f"{meta}: expected a JSON object"):
        ModelVersionsDataset(str(saved)).load().versions()


def test_is_read_only(tmp_path, bundle):
    with pytest.raises(DatasetError, match="read-only"):
        ModelVersionsDataset(str(tmp_path)).save(bundle)


def test_preview_is_a_table_of_the_saved_versions_without_weights(saved):
    """Kedro-Viz's table preview (``TablePreview``: pandas' split layout), newest first, from the
    metadata only: the weights are garbage here and are never read."""
    import inspect

    for weights in saved.glob("*/base_lm/model.safetensors"):
        weights.write_bytes(b"not safetensors")
    dataset = ModelVersionsDataset(str(saved))
    table = dataset.preview(nrows=1)
    assert inspect.signature(dataset.preview).return_annotation == "TablePreview"
    assert table["columns"][:3] == ["version", "family", "origin"]
    assert len(table["data"]) == len(table["index"]) == 1, "nrows"
    assert table["data"][0][1] == "causal_lm"
    assert len(dataset.preview()["data"]) == 2
