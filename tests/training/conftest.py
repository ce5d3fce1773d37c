"""Fixtures for the training-engine tests: tiny model, data, a fresh Accelerate state."""

from __future__ import annotations

import pytest
from accelerate.state import AcceleratorState, GradientState
from training_tiny import SyntheticLM, tiny_gpt2

from router_pipelines.training import TrainingConfig


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    """Accelerate keeps process-wide singletons; each test starts and ends with clean ones."""
    _reset_accelerate()
    yield
    _reset_accelerate()


def _reset_accelerate() -> None:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture
def make_config(tmp_path):
    """TrainingConfig for CPU tests; keyword overrides win."""

    def make(**overrides) -> TrainingConfig:
        values = dict(
            output_dir=str(tmp_path / "run"),
            max_steps=6,
            batch_size=4,
            learning_rate=1e-2,
            scheduler="constant",
            cpu=True,
            mixed_precision="no",
            eval_steps=None,
            save_steps=None,
            save_at_end=False,
            logging_steps=1,
            progress_bar=False,
        )
        values.update(overrides)
        return TrainingConfig(**values)

    return make


@pytest.fixture
def train_data():
    return SyntheticLM(32, seed=1)


@pytest.fixture
def eval_data():
    return SyntheticLM(12, seed=2)


@pytest.fixture
def model():
    return tiny_gpt2(seed=0)
