"""Fixtures for the evaluation tests: a plain tiny GPT-2 and data, no model family."""

import pytest
import torch
from tiny_models import VOCAB_SIZE, ListDataset, tiny_gpt2
from transformers import GPT2LMHeadModel


@pytest.fixture
def plain_gpt2() -> GPT2LMHeadModel:
    """A 2-block GPT-2 (64 positions) in eval mode, seeded."""
    torch.manual_seed(0)
    return tiny_gpt2(n_positions=64)


@pytest.fixture
def lm_dataset() -> ListDataset:
    """Four seeded sequences of 16 tokens, all positions scored."""
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
