"""Deterministic subsample and train/validation split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from router_pipelines.data.sampling import (
    split_indices,
    subsample,
    subsample_indices,
    train_validation_split,
)


def _records(n: int) -> pd.DataFrame:
    frame = pd.DataFrame({"text": [f"doc {i}" for i in range(n)]})
    frame.attrs["ingest"] = {"source": "x.jsonl", "records_read": n, "records_skipped": 0}
    return frame


def test_golden_indices_at_seed_42():
    np.testing.assert_array_equal(subsample_indices(10, 3, 42), [0, 6, 9])
    train, validation = split_indices(10, 0.3, 42)
    np.testing.assert_array_equal(train, [1, 2, 3, 4, 5, 6, 9])
    np.testing.assert_array_equal(validation, [0, 7, 8])


def test_subsample_same_seed_same_records_other_seed_other_records():
    records = _records(200)
    first, again, other = (subsample(records, 20, seed) for seed in (1, 1, 2))
    assert first["text"].tolist() == again["text"].tolist()
    assert first["text"].tolist() != other["text"].tolist()
    assert len(first) == 20 and first["text"].is_unique
    order = [int(t.split()[1]) for t in first["text"]]
    assert order == sorted(order)  # source order kept
    assert first.attrs == records.attrs


def test_subsample_of_none_or_more_than_all_keeps_everything():
    records = _records(5)
    assert subsample(records, None, 0)["text"].tolist() == records["text"].tolist()
    assert subsample(records, 50, 0)["text"].tolist() == records["text"].tolist()


def test_split_is_a_deterministic_partition():
    records = _records(100)
    train, validation = train_validation_split(records, 0.05, seed=3)
    assert (len(train), len(validation)) == (95, 5)
    assert set(train["text"]).isdisjoint(validation["text"])
    assert set(train["text"]) | set(validation["text"]) == set(records["text"])
    again = train_validation_split(records, 0.05, seed=3)[1]
    other = train_validation_split(records, 0.05, seed=4)[1]
    assert validation["text"].tolist() == again["text"].tolist()
    assert validation["text"].tolist() != other["text"].tolist()
    assert train.attrs["ingest"]["records_read"] == 100


def test_split_edge_cases():
    train, validation = split_indices(7, 0.0, 0)
    assert len(train) == 7 and len(validation) == 0
    train, validation = split_indices(2, 0.01, 0)  # a positive fraction holds out at least one
    assert len(train) == 1 and len(validation) == 1
    train, validation = split_indices(3, 0.9, 0)  # and leaves at least one for training
    assert len(train) == 1 and len(validation) == 2
    with pytest.raises(ValueError, match="needs at least 2 records"):
        split_indices(1, 0.5, 0)
