"""Fixtures for the evaluation tests: a plain tiny GPT-2 and data, no model family."""

import pytest
import torch
from tiny_models import tiny_gpt2
from transformers import GPT2LMHeadModel


@pytest.fixture
def plain_gpt2() -> GPT2LMHeadModel:
    """A 2-block GPT-2 (64 positions) in eval mode, seeded."""
    torch.manual_seed(0)
    return tiny_gpt2(n_positions=64)
