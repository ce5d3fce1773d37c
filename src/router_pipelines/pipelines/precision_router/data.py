"""Row selections of the token store for the router: training rows, calibration rows, and
the first ``seq_len`` tokens of each row (the seed's ``seq_len``)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch.utils.data import Dataset


class RowSelection(Dataset):
    """Rows ``indices`` of a token store (all when ``None``), cut to ``seq_len`` tokens."""

    def __init__(self, tokens: Any, indices: Iterable[int] | None, seq_len: int | None) -> None:
        from router_pipelines.data.torch_dataset import TokenBlockDataset

        self.rows = TokenBlockDataset(tokens)
        self.indices = list(range(len(self.rows)) if indices is None else indices)
        self.seq_len = seq_len

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.rows[self.indices[index]]
        if self.seq_len is None:
            return item
        return {key: value[: self.seq_len] for key, value in item.items()}


def rows_of(tokens: Any, indices: Iterable[int] | None, seq_len: int | None) -> RowSelection:
    return RowSelection(tokens, indices, seq_len)


def batches_of(dataset: Dataset, batch_size: int) -> list[dict[str, Any]]:
    """``dataset`` as a list of stacked batches (for calibration, kept in memory)."""
    import torch

    batches = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        batches.append({key: torch.stack([item[key] for item in items]) for key in items[0]})
    return batches


def row_split(
    rows: int, num_examples: int, calibration_examples: int, seed: int
) -> tuple[list[int], list[int]]:
    """Disjoint seeded random samples of the training rows: ``num_examples`` to train the
    router on, ``calibration_examples`` to calibrate budgets and measure sensitivities.

    Random rather than the first rows: the token store keeps documents in order, so a
    contiguous slice covers a few documents only and calibrates the router on them alone.
    """
    import numpy as np

    order = np.random.default_rng(seed).permutation(rows)
    train = sorted(int(i) for i in order[:num_examples])
    calibration = sorted(int(i) for i in order[num_examples : num_examples + calibration_examples])
    return train, calibration
