"""Shared fixtures of the data-layer tests: small files and one tiny trained tokenizer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from data_helpers import corpus_texts

from router_pipelines.config import config_from_dict
from router_pipelines.data.config import DataConfig
from router_pipelines.data.tokenizer import train_bpe_tokenizer


@pytest.fixture
def write_jsonl(tmp_path: Path) -> Callable[..., Path]:
    """Write objects (or raw ``bytes``/``str`` lines) as a JSONL file; returns its path."""

    def write(rows: list, name: str = "data.jsonl") -> Path:
        path = tmp_path / name
        with path.open("wb") as handle:
            for row in rows:
                if isinstance(row, bytes):
                    handle.write(row + b"\n")
                elif isinstance(row, str):
                    handle.write(row.encode("utf-8") + b"\n")
                else:
                    handle.write(json.dumps(row).encode("utf-8") + b"\n")
        return path

    return write


@pytest.fixture
def make_cfg() -> Callable[..., DataConfig]:
    """``DataConfig`` from keyword overrides, through the same path as the nodes."""

    def make(**values) -> DataConfig:
        return config_from_dict(DataConfig, values, "data")

    return make


@pytest.fixture(scope="session")
def bpe_tokenizer():
    """A byte-level BPE with 320 tokens trained on the test corpus (shared: do not mutate)."""
    return train_bpe_tokenizer(corpus_texts(), vocab_size=320, min_frequency=2)
