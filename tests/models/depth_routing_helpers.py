"""Tiny Qwen2 models for the depth-routing tests."""

from __future__ import annotations

import copy

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from router_pipelines.models.depth_routing import DepthRoutingConfig
from router_pipelines.models.depth_routing_lm import DepthRoutingLM

VOCAB = 64


def tiny_qwen2(num_layers: int = 4, attn: str = "sdpa", seed: int = 0) -> Qwen2ForCausalLM:
    """4 blocks, 32 wide, rotary, in eval mode, float32, initialised under ``seed``."""
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        attn_implementation=attn,
    )
    return Qwen2ForCausalLM(config).eval()


def routed(dense: Qwen2ForCausalLM, seed: int = 1, **config) -> DepthRoutingLM:
    """A routed copy of ``dense`` (its routers and predictors initialised under ``seed``)."""
    torch.manual_seed(seed)
    return DepthRoutingLM.from_base(copy.deepcopy(dense), DepthRoutingConfig(**config)).eval()


def center_predictors(model: DepthRoutingLM, input_ids: torch.Tensor) -> None:
    """Shift each untrained predictor's bias so about half the tokens pass in causal mode
    (an untrained predictor may select none, which would make causal-mode tests vacuous)."""
    with torch.no_grad(), model.routing_mode_as("topk"):
        for module in model.routed_modules():
            handle = module.register_forward_hook(_center_hook)
            model(input_ids=input_ids)
            handle.remove()


def _center_hook(module, args, output) -> None:
    module.routing.predictor[-1].bias.sub_(module.last.predictor_logits.median())
