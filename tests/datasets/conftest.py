"""Bundles for the dataset tests: a tiny GPT-2 over the character tokenizer."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.models.bundle import ModelBundle


@pytest.fixture
def bundle(char_tokenizer) -> ModelBundle:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=28, n_positions=16)
    )
    return ModelBundle(model=model, tokenizer=char_tokenizer, metadata={"note": "x"})
