"""TokenBlockDataset: one contiguous LongTensor, dict items of shape (T,)."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

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


def test_items_are_long_tensors_of_seq_len():
    dataset = TokenBlockDataset(_frame(3, 5))
    assert len(dataset) == 3 and dataset.seq_len == 5
    item = dataset[1]
    assert set(item) == {"input_ids", "labels", "attention_mask"}
    torch.testing.assert_close(item["input_ids"], torch.tensor([100, 101, 102, 103, 104]))
    torch.testing.assert_close(item["labels"], torch.tensor([-100, 101, 102, 103, 104]))
    torch.testing.assert_close(item["attention_mask"], torch.tensor([1, 1, 1, 1, 0]))
    assert all(t.dtype == torch.long and t.shape == (5,) for t in item.values())


def test_storage_is_one_contiguous_tensor():
    dataset = TokenBlockDataset(_frame(4, 6))
    assert dataset.blocks.shape == (4, 3, 6) and dataset.blocks.is_contiguous()
    item = dataset[2]
    assert (
        item["input_ids"].untyped_storage().data_ptr()
        == dataset.blocks.untyped_storage().data_ptr()
    )


def test_default_collate_stacks_batches():
    batch = next(iter(DataLoader(TokenBlockDataset(_frame(4, 6)), batch_size=2)))
    assert batch["input_ids"].shape == (2, 6) and batch["labels"].dtype == torch.long


def test_bad_frames_are_rejected():
    with pytest.raises(ValueError, match=r"missing column\(s\) \['labels'\]"):
        TokenBlockDataset(_frame(2, 4).drop(columns="labels"))
    ragged = _frame(2, 4)
    ragged.at[1, "input_ids"] = [1, 2, 3]
    with pytest.raises(ValueError, match="rows of different lengths"):
        TokenBlockDataset(ragged)
    with pytest.raises(ValueError, match="rows have 4 tokens, not 8"):
        TokenBlockDataset(_frame(2, 4), seq_len=8)


def test_empty_frame_gives_an_empty_dataset():
    dataset = TokenBlockDataset(_frame(0, 4), seq_len=4)
    assert len(dataset) == 0 and dataset.seq_len == 4
