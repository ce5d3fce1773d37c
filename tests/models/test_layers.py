"""One decoder-block discovery for every family, and dropping blocks, on GPT-2/Llama/Qwen2."""

from __future__ import annotations

import pytest
import torch
from tiny_models import VOCAB_SIZE, tiny_gpt2
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from router_pipelines.models.layers import LAYER_KEYS, find_decoder_blocks, keep_first_layers
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM


def tiny_decoder(config_class, model_class, n_layer: int = 3):
    """A 3-block, 32-wide Llama-style model (tiny_models' builders have two blocks)."""
    config = config_class(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=n_layer,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB_SIZE,
    )
    return model_class(config).eval()


BUILDERS = {
    "gpt2": (lambda: tiny_gpt2(n_layer=3), "transformer.h", "GPT2Block"),
    "llama": (
        lambda: tiny_decoder(LlamaConfig, LlamaForCausalLM),
        "model.layers",
        "LlamaDecoderLayer",
    ),
    "qwen2": (
        lambda: tiny_decoder(Qwen2Config, Qwen2ForCausalLM),
        "model.layers",
        "Qwen2DecoderLayer",
    ),
}


@pytest.mark.parametrize("architecture", list(BUILDERS))
def test_find_decoder_blocks_in_each_architecture(architecture):
    build, path, block_class = BUILDERS[architecture]
    model = build()
    name, blocks = find_decoder_blocks(model)
    assert name == path
    assert isinstance(blocks, nn.ModuleList) and len(blocks) == 3
    assert blocks is model.get_submodule(path)
    assert all(type(block).__name__ == block_class for block in blocks)


def test_find_decoder_blocks_through_a_switchable_wrapper():
    wrapped = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig())
    name, blocks = find_decoder_blocks(wrapped)
    assert name == "model.transformer.h" and blocks is wrapped.model.transformer.h
    assert wrapped.num_layers == 2


class _Config:
    num_hidden_layers = 2


class Custom(nn.Module):
    """An unknown layout: the blocks are found by the config's layer count."""

    def __init__(self) -> None:
        super().__init__()
        self.config = _Config()
        self.heads = nn.ModuleList([nn.Linear(2, 2)])  # wrong length: not the blocks
        self.stack = nn.Module()
        self.stack.blocks = nn.ModuleList([nn.Linear(2, 2), nn.Linear(2, 2)])


def test_generic_fallback_and_its_error():
    name, blocks = find_decoder_blocks(Custom())
    assert name == "stack.blocks" and len(blocks) == 2
    with pytest.raises(ValueError, match=r"found no decoder blocks in Linear: none of \['trans"):
        find_decoder_blocks(nn.Linear(2, 2))


@pytest.mark.parametrize("architecture", list(BUILDERS))
def test_keep_first_layers_keeps_the_first_blocks_and_the_config(architecture, tmp_path):
    build, path, _ = BUILDERS[architecture]
    model = build()
    first_two = list(model.get_submodule(path))[:2]
    ids = torch.randint(0, VOCAB_SIZE, (1, 6))
    keep_first_layers(model, 2)
    blocks = model.get_submodule(path)
    assert isinstance(blocks, nn.ModuleList) and list(blocks) == first_two  # same modules
    assert model.config.num_hidden_layers == 2
    if architecture == "gpt2":
        assert model.config.n_layer == 2
    if architecture == "qwen2":
        assert model.config.layer_types == ["full_attention"] * 2
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    # the truncated model saves and reloads as itself (Qwen2 checks layer_types on load)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 2
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, logits)


@pytest.mark.parametrize(
    ("n_layer", "message"),
    [
        (4, "n_layer: 4 exceeds the model's 3 layers"),
        (0, "n_layer: must be an integer >= 1, got 0"),
        (True, "n_layer: expected an integer"),
    ],
)
def test_keep_first_layers_errors_leave_the_model_whole(n_layer, message):
    model = tiny_gpt2(n_layer=3)
    with pytest.raises(ValueError, match=message):
        keep_first_layers(model, n_layer)
    assert len(model.transformer.h) == 3 and model.config.num_hidden_layers == 3


def test_layer_keys_are_the_switchable_per_block_keys():
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig())
    model.set_layer_precision([dict.fromkeys(LAYER_KEYS, 4)] * 2)
    assert set(model.precision_map().values()) == {(4, 8)}
