"""Deterministic subsampling and train/validation split: of record numbers, or of small frames.

The pipeline streams, so it works on record numbers: :func:`assign_splits` gives every valid
record (numbered in source order) its split, and the readers pick records by that number. Both
draw from NumPy generators seeded with ``[seed, stream]`` so the subsample and the split are
independent streams of one user seed. Chosen indices are sorted, which keeps the records in their
source order (stable diffs, and the packing of neighbouring documents stays as in the source).
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd

_SUBSAMPLE_STREAM = 0
_SPLIT_STREAM = 1

UNUSED, TRAIN, VALIDATION = 0, 1, 2  # the codes of :func:`assign_splits`


def subsample_indices(n_total: int, n: int | None, seed: int) -> np.ndarray:
    """``min(n, n_total)`` distinct sorted indices of ``range(n_total)``; all when ``n`` is None."""
    if n is None or n >= n_total:
        return np.arange(n_total)
    rng = np.random.default_rng([seed, _SUBSAMPLE_STREAM])
    return np.sort(rng.choice(n_total, size=n, replace=False))


def split_indices(
    n_total: int, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ``(train, validation)`` indices; validation gets ``round(fraction * n)`` records.

    A positive fraction always holds out at least one record and leaves at least one for
    training.

    Raises:
        ValueError: a positive fraction with fewer than 2 records.
    """
    if not 0 <= validation_fraction < 1:
        raise ValueError(f"validation_fraction: must be in [0, 1), got {validation_fraction!r}")
    if validation_fraction == 0:
        return np.arange(n_total), np.arange(0)
    if n_total < 2:
        raise ValueError(
            f"validation_fraction: {validation_fraction} needs at least 2 records to split, "
            f"got {n_total}"
        )
    n_validation = min(max(round(validation_fraction * n_total), 1), n_total - 1)
    order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(n_total)
    return np.sort(order[n_validation:]), np.sort(order[:n_validation])


def assign_splits(
    n_total: int, max_records: int | None, validation_fraction: float, seed: int
) -> np.ndarray:
    """The split of each of ``n_total`` records: :data:`UNUSED`, :data:`TRAIN` or :data:`VALIDATION`.

    The same records as ``train_validation_split(subsample(records, max_records, seed), ...)``
    on an in-memory frame, so streaming changes no result.

    Returns:
        ``(n_total,)`` uint8 codes (one byte per record: bounded even for large corpora).
    """
    chosen = subsample_indices(n_total, max_records, seed)
    train, validation = split_indices(len(chosen), validation_fraction, seed)
    codes = np.full(n_total, UNUSED, dtype=np.uint8)
    codes[chosen[train]] = TRAIN
    codes[chosen[validation]] = VALIDATION
    return codes


def subsample(records: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """A deterministic subsample of ``n`` rows (all rows when ``n`` is None), ``attrs`` kept."""
    return _take(records, subsample_indices(len(records), n, seed))


def train_validation_split(
    records: pd.DataFrame, validation_fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split ``records`` into ``(train, validation)`` frames, ``attrs`` kept on both."""
    train_idx, validation_idx = split_indices(len(records), validation_fraction, seed)
    return _take(records, train_idx), _take(records, validation_idx)


def _take(records: pd.DataFrame, indices: np.ndarray) -> pd.DataFrame:
    taken = records.iloc[indices].reset_index(drop=True)
    taken.attrs = copy.deepcopy(
        records.attrs
    )  # explicit: attrs propagation is experimental in pandas
    return taken
