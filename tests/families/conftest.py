"""Fixtures for the family tests: tiny models and a batch (tests/conftest.py sets one thread)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2 as build_tiny_gpt2
from transformers import GPT2LMHeadModel


@pytest.fixture
def tiny_gpt2() -> GPT2LMHeadModel:
    """A 2-layer GPT-2 without dropout, so train-mode forwards are deterministic."""
    torch.manual_seed(0)
    return build_tiny_gpt2().train()


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    """(2, 12) batch; the last 3 positions of row 1 are padding (masked, label -100)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(0, 128, (2, 12), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 9:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}
