"""Fixtures for the family tests: tiny models and data (tests/conftest.py sets one thread)."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2 as build_tiny_gpt2
from transformers import GPT2LMHeadModel

from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM


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


def _switchable(**flags: bool) -> SwitchableLM:
    """A 2-block GPT-2 with switchable widths 2/4/8 (8-bit activations), in eval mode.
    n_embd=64 (n_inner 256) keeps every linear's in_features a multiple of 32 and its
    out_features a multiple of 16, as the CPU int4 kernel needs."""
    torch.manual_seed(0)
    base = build_tiny_gpt2(n_embd=64, n_positions=64)
    return SwitchableLM.from_base(base, SwitchableConfig(bit_widths=[2, 4, 8], **flags)).eval()


@pytest.fixture
def tiny_switchable() -> SwitchableLM:
    return _switchable()


@pytest.fixture
def tiny_switchable_tables() -> SwitchableLM:
    """``tiny_switchable`` with its embeddings and (tied) LM head quantized too."""
    return _switchable(quantize_lm_head=True, quantize_embeddings=True)
