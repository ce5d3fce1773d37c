"""Tiny bundles of each family for the serving and registry tests."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2
from transformers import GPT2LMHeadModel

from router_pipelines.models.bundle import ModelBundle


def tiny_char_gpt2(**overrides) -> GPT2LMHeadModel:
    """1 layer, 16 wide, over the 28-token character vocabulary of ``char_tokenizer``."""
    return tiny_gpt2(
        n_layer=1,
        n_embd=16,
        vocab_size=28,
        bos_token_id=1,
        eos_token_id=1,
        pad_token_id=0,
        **overrides,
    )


@pytest.fixture
def base_bundle(char_tokenizer) -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(tiny_char_gpt2(), char_tokenizer, {"note": "base"})


@pytest.fixture
def switchable_bundle(char_tokenizer) -> ModelBundle:
    from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM

    torch.manual_seed(0)
    # Wide initial weights: the widths then continue a prompt differently (small ones agree).
    base = tiny_char_gpt2(initializer_range=0.5)
    model = SwitchableLM.from_base(base, SwitchableConfig(bit_widths=[2, 4, 8]))
    model.initialize_quantizers(torch.randint(2, 28, (2, 12)))  # steps from one batch
    model.eval()
    return ModelBundle(model, char_tokenizer, {"family": "switchable"})
