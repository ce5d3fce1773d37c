"""Test-wide settings: offline, deterministic, and MLflow pointed at a throw-away store."""

from __future__ import annotations

import os
from collections import Counter

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


# --- Scheduling under `pytest -n 2 --dist loadscope` (what `make test` runs) -------------------
# xdist hands out whole modules, biggest (most tests) first by default, so a module with a few
# minutes-long tests starts last and the run ends on one busy worker. Here the long units go
# first, and the operations modules that read the session's one `kedro run --env=debug`
# (tests/operations/conftest.py) form one unit, so that run happens on one worker, not both.
# Tests stay order-independent: this changes only where and when they run.
SCHEDULED_FIRST = (  # (nodeid prefix, unit), in start order
    ("tests/operations/test_airflow.py", "tests/operations/test_airflow.py"),  # ~5 min
    ("tests/operations/", "tests/operations (one debug run)"),
)


def _first_unit(nodeid: str) -> int | None:
    for index, (prefix, _) in enumerate(SCHEDULED_FIRST):
        if nodeid.startswith(prefix):
            return index
    return None


def pytest_xdist_make_scheduler(config, log):
    if config.getoption("dist", "no") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class LongUnitsFirst(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            index = _first_unit(nodeid)
            return super()._split_scope(nodeid) if index is None else SCHEDULED_FIRST[index][1]

    # Units go out in collection order, which pytest_collection_modifyitems below sets.
    config.option.loadscopereorder = False
    return LongUnitsFirst(config, log)


def pytest_collection_modifyitems(config, items):
    if config.getoption("dist", "no") != "loadscope":
        return

    def module(item) -> str:
        return item.nodeid.split("::", 1)[0]

    sizes = Counter(module(item) for item in items)

    def order(item) -> tuple[int, int]:
        index = _first_unit(item.nodeid)
        if index is not None:
            return (index, 0)
        # the rest as xdist's default: most tests first (sorted() is stable within a module)
        return (len(SCHEDULED_FIRST), -sizes[module(item)])

    items[:] = sorted(items, key=order)
