"""A ``torch.utils.data.Dataset`` view of token blocks that reads rows on demand."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from router_pipelines.data.token_store import ARRAYS, TokenBlocks


class TokenBlockDataset(Dataset):
    """Rows of token blocks as ``{"input_ids", "labels", "attention_mask"}`` 1-D LongTensors.

    Nothing is loaded up front: an item reads its row from the (memory-mapped) store, and
    :meth:`__getitems__`, which torch's ``DataLoader`` calls for a whole batch, gathers the
    batch with one fancy-index per array.

    Args:
        blocks: a :class:`TokenBlocks`, or (older callers) a DataFrame with list-of-int
            columns ``input_ids``, ``labels``, ``attention_mask``, every cell ``T`` long.
        seq_len: ``T`` for an empty frame (ignored otherwise, but checked when given).

    Raises:
        ValueError: a column is missing, or rows differ in length.
    """

    def __init__(self, blocks: TokenBlocks | pd.DataFrame, seq_len: int | None = None) -> None:
        if isinstance(blocks, pd.DataFrame):
            blocks = _blocks_from_frame(blocks, seq_len)
        elif not isinstance(blocks, TokenBlocks):
            raise ValueError(
                f"token blocks: expected TokenBlocks or a DataFrame, got {type(blocks).__name__}"
            )
        if seq_len is not None and len(blocks) and blocks.seq_len != seq_len:
            raise ValueError(f"token blocks: rows have {blocks.seq_len} tokens, not {seq_len}")
        self.blocks = blocks

    @property
    def seq_len(self) -> int:
        """Tokens per row (``T``)."""
        return self.blocks.seq_len

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} token blocks")
        rows = self.blocks.gather([index])
        return {name: torch.from_numpy(rows[name][0]) for name in ARRAYS}  # (T,)

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """One sample per index, gathered together (the default collate then stacks them)."""
        rows = {name: torch.from_numpy(a) for name, a in self.blocks.gather(indices).items()}
        return [{name: rows[name][i] for name in ARRAYS} for i in range(len(indices))]


def _blocks_from_frame(frame: pd.DataFrame, seq_len: int | None) -> TokenBlocks:
    missing = [name for name in ARRAYS if name not in frame.columns]
    if missing:
        raise ValueError(f"token frame: missing column(s) {missing}; expected {list(ARRAYS)}")
    if len(frame) == 0:
        empty = np.zeros((0, seq_len or 0), dtype=np.int64)
        return TokenBlocks.from_arrays(empty, empty, empty)
    try:
        arrays = [np.asarray(frame[name].tolist(), dtype=np.int64) for name in ARRAYS]
        stacked = np.stack(arrays, axis=1)  # (N, 3, T)
    except ValueError as err:
        raise ValueError(f"token frame: rows of different lengths ({err})") from err
    if stacked.ndim != 3:
        raise ValueError(f"token frame: expected (N, 3, T) ints, got shape {stacked.shape}")
    if seq_len is not None and stacked.shape[2] != seq_len:
        raise ValueError(f"token frame: rows have {stacked.shape[2]} tokens, not {seq_len}")
    return TokenBlocks.from_arrays(*(stacked[:, i] for i in range(len(ARRAYS))))
