"""The token store: streamed .npy writing, memory-mapped reading, derived arrays, pickling."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest

from router_pipelines.constants import IGNORE_INDEX
from router_pipelines.data.token_store import (
    BLOCKS_FILE,
    NpyRowWriter,
    SplitWriter,
    TokenBlocks,
    ids_dtype,
)


def _instruction_rows(n: int, seq_len: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 70_000, size=(n, seq_len))
    mask = (np.arange(seq_len) < rng.integers(1, seq_len + 1, size=(n, 1))).astype(np.int64)
    labels = np.where(mask.astype(bool) & (np.arange(seq_len) % 2 == 0), ids, IGNORE_INDEX)
    return ids, labels, mask


def test_rows_written_in_chunks_read_back_as_one_npy(tmp_path):
    rows = np.arange(7 * 5, dtype=np.uint16).reshape(7, 5)
    writer = NpyRowWriter(tmp_path / "ids.npy", np.uint16, (5,))
    for chunk in (rows[:3], rows[3:3], rows[3:]):  # an empty chunk too
        writer.append(chunk)
    assert writer.close() == 7
    loaded = np.load(tmp_path / "ids.npy", mmap_mode="r")
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.uint16
    np.testing.assert_array_equal(loaded, rows)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), rows)  # a standard .npy


def test_zero_rows_and_wrong_widths(tmp_path):
    writer = NpyRowWriter(tmp_path / "empty.npy", np.int32, (4,))
    with pytest.raises(ValueError, match=r"rows of shape \(2, 3\)"):
        writer.append(np.zeros((2, 3)))
    writer.close()
    assert np.load(tmp_path / "empty.npy", mmap_mode="r").shape == (0, 4)


def test_ids_dtype_is_the_smallest_that_fits():
    assert ids_dtype(8192) == np.uint16
    assert ids_dtype(65536) == np.uint16
    assert ids_dtype(65537) == np.int32


def test_pretraining_split_stores_ids_only(tmp_path):
    ids = np.arange(40, dtype=np.int64).reshape(5, 8)
    writer = SplitWriter(tmp_path / "train", 8, np.dtype(np.uint16), masked=False)
    writer.append(ids[:2])
    writer.append(ids[2:])
    info = writer.close("train", "abc")
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == [BLOCKS_FILE, "input_ids.npy"]
    assert info["rows"] == 5 and info["tokens"] == info["supervised_tokens"] == 40
    blocks = TokenBlocks.open(tmp_path / "train")
    assert (len(blocks), blocks.seq_len, blocks.fingerprint, blocks.split) == (5, 8, "abc", "train")
    assert blocks.input_ids.dtype == np.uint16 and isinstance(blocks.input_ids, np.memmap)
    np.testing.assert_array_equal(blocks.input_ids, ids)
    np.testing.assert_array_equal(blocks.labels, ids)
    assert blocks.attention_mask.shape == (5, 8) and blocks.attention_mask.all()
    assert blocks.attention_mask.strides == (0, 0)  # a broadcast, no memory
    assert blocks.num_tokens == blocks.supervised_tokens == 40
    gathered = blocks.gather([4, 1])
    assert all(a.dtype == np.int64 and a.shape == (2, 8) for a in gathered.values())
    np.testing.assert_array_equal(gathered["labels"], ids[[4, 1]])


def test_instruction_split_round_trips_labels_and_masks(tmp_path):
    ids, labels, mask = _instruction_rows(6, 10)
    writer = SplitWriter(tmp_path / "v", 10, ids_dtype(70_000), masked=True)
    writer.append(ids[:4], labels[:4], mask[:4])
    writer.append(ids[4:], labels[4:], mask[4:])
    writer.close("validation", "k")
    blocks = TokenBlocks.open(tmp_path / "v")
    assert (blocks.input_ids.dtype, blocks.labels.dtype, blocks.attention_mask.dtype) == (
        np.int32,
        np.int32,
        np.uint8,
    )
    np.testing.assert_array_equal(blocks.input_ids, ids)
    np.testing.assert_array_equal(blocks.labels, labels)
    np.testing.assert_array_equal(blocks.attention_mask, mask)
    assert blocks.num_tokens == int(mask.sum())
    assert blocks.supervised_tokens == int((labels != IGNORE_INDEX).sum())
    with pytest.raises(ValueError, match="labels and attention_mask are required"):
        SplitWriter(tmp_path / "w", 10, np.dtype(np.int32), masked=True).append(ids)


def test_stored_arrays_are_read_only(tmp_path):
    writer = SplitWriter(tmp_path / "s", 4, np.dtype(np.uint16), masked=False)
    writer.append(np.ones((2, 4), dtype=np.int64))
    writer.close("train", "k")
    blocks = TokenBlocks.open(tmp_path / "s")
    with pytest.raises(ValueError, match="read-only"):
        blocks.input_ids[0, 0] = 5
    memory = TokenBlocks.from_arrays(np.ones((2, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="read-only"):
        memory.input_ids[0, 0] = 5


def test_a_stored_split_pickles_as_its_path_and_deepcopies_to_itself(tmp_path):
    writer = SplitWriter(tmp_path / "big", 256, np.dtype(np.uint16), masked=False)
    writer.append(np.arange(2000 * 256, dtype=np.int64).reshape(2000, 256) % 60_000)
    writer.close("train", "fp")
    blocks = TokenBlocks.open(tmp_path / "big")
    payload = pickle.dumps(blocks)
    assert len(payload) < 1000  # 1 MB of tokens, a few hundred bytes of pickle
    again = pickle.loads(payload)
    assert again.path == blocks.path and isinstance(again.input_ids, np.memmap)
    np.testing.assert_array_equal(again.input_ids[1999], blocks.input_ids[1999])
    assert copy.deepcopy(blocks) is blocks
    memory = TokenBlocks.from_arrays([[1, 2, 3]], attention_mask=[[1, 1, 0]])
    restored = pickle.loads(pickle.dumps(memory))
    np.testing.assert_array_equal(restored.labels, [[1, 2, IGNORE_INDEX]])


def test_from_arrays_defaults_and_checks():
    blocks = TokenBlocks.from_arrays([[5, 6, 7], [8, 9, 10]], attention_mask=[[1, 1, 0], [1, 1, 1]])
    assert blocks.path is None and blocks.fingerprint == "in-memory"
    assert blocks.labels.tolist() == [[5, 6, IGNORE_INDEX], [8, 9, 10]]
    assert blocks.num_tokens == 5 and blocks.supervised_tokens == 5
    with pytest.raises(ValueError, match=r"input_ids: expected \(N, T\)"):
        TokenBlocks.from_arrays([1, 2, 3])
    with pytest.raises(ValueError, match="labels: shape"):
        TokenBlocks.from_arrays([[1, 2]], labels=[[1, 2, 3]])
    with pytest.raises(ValueError, match="expected integers"):
        TokenBlocks.from_arrays([[0.5, 1.0]])


def test_a_store_of_another_format_is_refused(tmp_path):
    writer = SplitWriter(tmp_path / "s", 4, np.dtype(np.uint16), masked=False)
    writer.append(np.ones((1, 4), dtype=np.int64))
    writer.close("train", "k")
    info = json.loads((tmp_path / "s" / BLOCKS_FILE).read_text())
    (tmp_path / "s" / BLOCKS_FILE).write_text(json.dumps({**info, "format": 1}))
    with pytest.raises(ValueError, match="token store format 1"):
        TokenBlocks.open(tmp_path / "s")
    (tmp_path / "s" / BLOCKS_FILE).write_text(json.dumps({**info, "rows": 3}))
    with pytest.raises(ValueError, match=r"shape \(1, 4\), blocks.json says \(3, 4\)"):
        TokenBlocks.open(tmp_path / "s")
