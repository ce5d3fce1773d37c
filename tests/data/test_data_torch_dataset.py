"""TokenBlockDataset: dict items of shape (T,), read from the store on demand, batched fetch."""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from router_pipelines.data.token_store import BLOCKS_FILE, STORE_FORMAT_VERSION, TokenBlocks
from router_pipelines.data.torch_dataset import TokenBlockDataset


def _frame(n: int, seq_len: int) -> pd.DataFrame:
    ids = [[row * 100 + t for t in range(seq_len)] for row in range(n)]
    return pd.DataFrame(
        {
            "input_ids": ids,
            "labels": [[-100] + r[1:] for r in ids],
            "attention_mask": [[1] * (seq_len - 1) + [0] for _ in ids],
        }
    )


def _huge_store(folder, rows: int, seq_len: int) -> None:
    """A pretraining store of ``rows`` blocks, a sparse file (no disk writes): row r is r % 65536."""
    folder.mkdir()
    ids = np.lib.format.open_memmap(
        folder / "input_ids.npy", mode="w+", dtype=np.uint16, shape=(rows, seq_len)
    )
    for row in (0, 7, rows - 1):
        ids[row] = row % 65536
    ids.flush()
    del ids
    info = {
        "format": STORE_FORMAT_VERSION,
        "fingerprint": "f" * 64,
        "split": "train",
        "rows": rows,
        "seq_len": seq_len,
        "tokens": rows * seq_len,
        "supervised_tokens": rows * seq_len,
        "arrays": {"input_ids": "uint16"},
    }
    (folder / BLOCKS_FILE).write_text(json.dumps(info))


def test_items_are_long_tensors_of_seq_len():
    dataset = TokenBlockDataset(_frame(3, 5))
    assert len(dataset) == 3 and dataset.seq_len == 5
    item = dataset[1]
    assert set(item) == {"input_ids", "labels", "attention_mask"}
    torch.testing.assert_close(item["input_ids"], torch.tensor([100, 101, 102, 103, 104]))
    torch.testing.assert_close(item["labels"], torch.tensor([-100, 101, 102, 103, 104]))
    torch.testing.assert_close(item["attention_mask"], torch.tensor([1, 1, 1, 1, 0]))
    assert all(t.dtype == torch.long and t.shape == (5,) for t in item.values())
    with pytest.raises(IndexError, match="out of range"):
        dataset[3]


def test_batched_fetch_equals_item_by_item():
    dataset = TokenBlockDataset(_frame(6, 4))
    indices = [5, 0, 3, 3]
    batched = dataset.__getitems__(indices)
    assert len(batched) == 4
    for got, index in zip(batched, indices, strict=True):
        for name, tensor in dataset[index].items():
            torch.testing.assert_close(got[name], tensor)


def test_default_collate_stacks_batches_through_getitems(monkeypatch):
    dataset = TokenBlockDataset(_frame(4, 6))
    calls = []
    original = TokenBlockDataset.__getitems__
    monkeypatch.setattr(
        TokenBlockDataset,
        "__getitems__",
        lambda self, idx: calls.append(list(idx)) or original(self, idx),
    )
    batch = next(iter(DataLoader(dataset, batch_size=2)))
    assert calls == [[0, 1]]  # one gather per batch, not one read per item
    assert batch["input_ids"].shape == (2, 6) and batch["labels"].dtype == torch.long
    assert batch["input_ids"][1].tolist() == [100, 101, 102, 103, 104, 105]


def test_pretraining_store_gives_labels_equal_to_ids_and_full_attention():
    ids = np.arange(12, dtype=np.uint16).reshape(3, 4)
    item = TokenBlockDataset(TokenBlocks.from_arrays(ids))[2]
    assert item["input_ids"].tolist() == [8, 9, 10, 11]
    assert item["labels"].tolist() == [8, 9, 10, 11]
    assert item["labels"].data_ptr() != item["input_ids"].data_ptr()  # no shared storage
    assert item["attention_mask"].tolist() == [1, 1, 1, 1]


def test_a_store_far_larger_than_what_is_read_is_not_loaded(tmp_path):
    rows, seq_len = 1_000_000, 64  # 128 MB of ids on disk (a sparse file)
    _huge_store(tmp_path / "train", rows, seq_len)
    tracemalloc.start()
    try:
        blocks = TokenBlocks.open(tmp_path / "train")
        dataset = TokenBlockDataset(blocks)
        batch = next(iter(DataLoader(dataset, batch_size=8, sampler=[rows - 1, 7, 0, 1] * 2)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(blocks.input_ids, np.memmap)
    assert len(dataset) == rows
    assert batch["input_ids"][:, 0].tolist() == [(rows - 1) % 65536, 7, 0, 0] * 2
    assert peak < 2_000_000, f"{peak} bytes traced: the store was read, not indexed"


def test_bad_frames_are_rejected():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['labels'\]"):
        TokenBlockDataset(_frame(2, 4).drop(columns="labels"))
    ragged = _frame(2, 4)
    ragged.at[1, "input_ids"] = [1, 2, 3]
    with pytest.raises(ValueError, match="rows of different lengths"):
        TokenBlockDataset(ragged)
    with pytest.raises(ValueError, match="rows have 4 tokens, not 8"):
        TokenBlockDataset(_frame(2, 4), seq_len=8)
    with pytest.raises(ValueError, match="expected TokenBlocks or a DataFrame"):
        TokenBlockDataset([[1, 2, 3]])


def test_empty_frame_gives_an_empty_dataset():
    dataset = TokenBlockDataset(_frame(0, 4), seq_len=4)
    assert len(dataset) == 0 and dataset.seq_len == 4
