"""A ``torch.utils.data.Dataset`` view of a tokenized frame."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from router_pipelines.data.packing import COLUMNS


class TokenBlockDataset(Dataset):
    """Rows of a tokenized frame as ``{"input_ids", "labels", "attention_mask"}`` LongTensors.

    The three columns are stacked once into one contiguous ``(N, 3, T)`` tensor, so indexing is a
    view and a batch needs no per-item list conversion.

    Args:
        frame: output of :func:`router_pipelines.data.packing.tokenize_records`; every cell a
            sequence of ``T`` ints.
        seq_len: ``T`` for an empty frame (ignored otherwise, but checked when given).

    Raises:
        ValueError: a column is missing, or rows differ in length.
    """

    def __init__(self, frame: pd.DataFrame, seq_len: int | None = None) -> None:
        missing = [name for name in COLUMNS if name not in frame.columns]
        if missing:
            raise ValueError(f"token frame: missing column(s) {missing}; expected {list(COLUMNS)}")
        if len(frame) == 0:
            self.blocks = torch.zeros((0, len(COLUMNS), seq_len or 0), dtype=torch.long)
            return
        try:
            stacked = np.stack(
                [np.asarray(frame[name].tolist(), dtype=np.int64) for name in COLUMNS], axis=1
            )  # (N, 3, T)
        except ValueError as err:
            raise ValueError(f"token frame: rows of different lengths ({err})") from err
        if stacked.ndim != 3:
            raise ValueError(f"token frame: expected (N, 3, T) ints, got shape {stacked.shape}")
        if seq_len is not None and stacked.shape[2] != seq_len:
            raise ValueError(f"token frame: rows have {stacked.shape[2]} tokens, not {seq_len}")
        self.blocks = torch.from_numpy(np.ascontiguousarray(stacked))

    @property
    def seq_len(self) -> int:
        """Tokens per row (``T``)."""
        return self.blocks.shape[2]

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.blocks[index]  # (3, T)
        return {name: row[i] for i, name in enumerate(COLUMNS)}
