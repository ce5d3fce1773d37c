"""TokenBlocksDataset: a token split saved as a reference to its store, mapped again on load."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from kedro.io import DataCatalog
from kedro.io.core import DatasetError

from router_pipelines.data.token_store import SplitWriter, TokenBlocks
from router_pipelines.datasets.token_blocks import TokenBlocksDataset

IDS = np.arange(48, dtype=np.int64).reshape(6, 8)


def _store(folder, fingerprint="abc123", rows=IDS):
    writer = SplitWriter(folder, rows.shape[1], np.dtype(np.uint16), masked=False)
    writer.append(rows)
    writer.close("validation", fingerprint)
    return TokenBlocks.open(folder)


def test_a_split_round_trips_as_a_reference_and_is_mapped_not_copied(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _store(tmp_path / "cache" / "abc123" / "validation")
    dataset = TokenBlocksDataset(filepath="refs/validation_tokens.json")
    assert not dataset.exists()
    dataset.save(blocks)
    reference = json.loads((tmp_path / "refs/validation_tokens.json").read_text())
    assert reference["path"] == "cache/abc123/validation", "relative to the project"
    assert (reference["fingerprint"], reference["rows"], reference["seq_len"]) == ("abc123", 6, 8)
    assert (tmp_path / "refs/validation_tokens.json").stat().st_size < 1000, "no tokens inside"
    loaded = dataset.load()
    assert isinstance(loaded.input_ids, np.memmap)
    assert (loaded.fingerprint, loaded.split, len(loaded)) == ("abc123", "validation", 6)
    np.testing.assert_array_equal(loaded.input_ids, IDS)


def test_the_shipped_catalog_persists_both_token_splits(tmp_path):
    from kedro.config import OmegaConfigLoader
    from project_copy import PROJECT_ROOT

    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="debug"
    )
    catalog = DataCatalog.from_config(loader["catalog"])
    for name in ("train_tokens", "validation_tokens"):
        assert catalog.get_type(name).endswith("TokenBlocksDataset"), name
    assert "data/05_model_input/debug/" in str(catalog["validation_tokens"]._describe())


def test_a_split_in_memory_is_refused_before_anything_is_written(tmp_path):
    dataset = TokenBlocksDataset(filepath=str(tmp_path / "train_tokens.json"))
    in_memory = TokenBlocks.from_arrays(IDS, fingerprint="abc", split="train")
    with pytest.raises(DatasetError, match=r"train_tokens.json: the train split lives in memory"):
        dataset.save(in_memory)
    with pytest.raises(DatasetError, match="expected TokenBlocks"):
        dataset.save(IDS)
    assert not (tmp_path / "train_tokens.json").exists()


def test_a_store_that_changed_or_vanished_is_named_not_read(tmp_path):
    folder = tmp_path / "cache" / "validation"
    dataset = TokenBlocksDataset(filepath=str(tmp_path / "validation_tokens.json"))
    dataset.save(_store(folder))
    shutil.rmtree(folder)
    _store(folder, fingerprint="other9", rows=IDS[:4])
    with pytest.raises(DatasetError, match=r"is not the one saved \(fingerprint 'abc123' -> "):
        dataset.load()
    with pytest.raises(DatasetError, match=r"rows 6 -> 4"):
        dataset.load()
    shutil.rmtree(folder)
    with pytest.raises(
        DatasetError, match=r"its token store .* is gone .*--pipelines=data_processing"
    ):
        dataset.load()
    with pytest.raises(DatasetError, match="no token reference; run the data pipeline"):
        TokenBlocksDataset(filepath=str(tmp_path / "missing.json")).load()
