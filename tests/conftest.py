"""Test-wide settings: offline, deterministic, and MLflow pointed at a throw-away store."""

from __future__ import annotations

import os

# Set before anything imports transformers/datasets/mlflow: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_threads():
    # Tiny test models are dominated by thread hand-off on 2 shared cores: one thread is
    # many times faster and makes float results independent of the core count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """A fresh sqlite MLflow store for one test; returns its tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # Earlier tests (kedro runs) leave an active experiment id of another store behind.
    mlflow.set_experiment("tests")
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def char_tokenizer():
    """A 28-token character tokenizer: ``<pad>``=0, ``<eos>``=1, ``a``..``z`` = 2..27."""
    from tiny_models import char_tokenizer

    return char_tokenizer()


@pytest.fixture
def lm_dataset():
    """Four seeded sequences of 16 tokens, all positions scored."""
    from tiny_models import VOCAB_SIZE, ListDataset

    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(4):
        input_ids = torch.randint(0, VOCAB_SIZE, (16,), generator=generator)
        items.append(
            {
                "input_ids": input_ids,
                "labels": input_ids.clone(),
                "attention_mask": torch.ones(16, dtype=torch.long),
            }
        )
    return ListDataset(items)
