"""Named model presets (``debug``, ``tiny``, ``small``) and the causal-LM builder.

A preset fixes the shape; the architecture (GPT-2 by default, Llama or Qwen2) is chosen
separately, so ``small`` means the same shape in every architecture. ``small`` has the shape
of the Dynamic Transformer study's from-scratch model (8 layers, hidden 384, intermediate
1024), whose ~30M parameters assume GPT-2's 50,257-token vocabulary: as GPT-2 it has 30.7M
parameters at that vocabulary but 14.6M at the project's default 8,192-token BPE (11.4M
outside the tied token embedding); as Llama / Qwen2 (three MLP matrices, 1024 positions via
RoPE instead of a table) 17.3M at 8,192 tokens. ``tests/models/test_presets.py`` counts them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router_pipelines.config import check_bool, check_choice, check_fraction, check_int

# n_layer, hidden size, attention heads, MLP intermediate size
PRESETS: dict[str, dict[str, int]] = {
    "debug": {"n_layer": 2, "hidden": 64, "n_head": 2, "intermediate": 256},  # CI-sized
    "tiny": {"n_layer": 4, "hidden": 128, "n_head": 4, "intermediate": 512},
    "small": {"n_layer": 8, "hidden": 384, "n_head": 6, "intermediate": 1024},
}
ARCHITECTURES = ("gpt2", "llama", "qwen2")


@dataclass
class ModelConfig:
    """How to get the base causal LM: a named preset trained from scratch, or a pretrained one."""

    preset: str = "tiny"  # debug | tiny | small (ignored when name_or_path is set)
    architecture: str = "gpt2"  # gpt2 | llama | qwen2
    name_or_path: str | None = None  # hub id or local folder for from_pretrained
    trust_remote_code: bool = False  # only for name_or_path; off unless the user turns it on
    # only for name_or_path: adapt the model to another tokenizer (resize the embeddings to it and
    # take its special-token ids); without it a mismatch is an error before training
    resize_token_embeddings: bool = False
    max_positions: int = 1024  # context length of a from-scratch model
    dropout: float = 0.0  # residual/attention/embedding dropout of a from-scratch model
    overrides: dict[str, Any] = field(default_factory=dict)  # extra transformers config fields

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("architecture", self.architecture, ARCHITECTURES)
        check_fraction("dropout", self.dropout)
        check_int("max_positions", self.max_positions, minimum=1)
        check_bool("trust_remote_code", self.trust_remote_code)
        check_bool("resize_token_embeddings", self.resize_token_embeddings)


def transformers_config(config: ModelConfig, vocab_size: int, special_ids: dict[str, int | None]):
    """The transformers ``PretrainedConfig`` for a from-scratch preset model."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    shape = PRESETS[config.preset]
    # Given to the constructor, not set afterwards: transformers validates the config when it
    # is built, and GPT-2's default ids (50256) outside our vocabulary would be logged as a flaw.
    # A missing id is None (a config made only to count parameters has no tokenizer).
    special = {
        key: special_ids.get(key) for key in ("bos_token_id", "eos_token_id", "pad_token_id")
    }
    if config.architecture == "gpt2":
        hf_config = GPT2Config(
            **special,
            vocab_size=vocab_size,
            n_positions=config.max_positions,
            n_embd=shape["hidden"],
            n_layer=shape["n_layer"],
            n_head=shape["n_head"],
            n_inner=shape["intermediate"],
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.dropout,
        )
    else:
        config_cls = LlamaConfig if config.architecture == "llama" else Qwen2Config
        hf_config = config_cls(
            **special,
            vocab_size=vocab_size,
            hidden_size=shape["hidden"],
            intermediate_size=shape["intermediate"],
            num_hidden_layers=shape["n_layer"],
            num_attention_heads=shape["n_head"],
            num_key_value_heads=shape["n_head"],
            max_position_embeddings=config.max_positions,
            attention_dropout=config.dropout,
            tie_word_embeddings=True,
        )
    for key, value in config.overrides.items():
        if not hasattr(hf_config, key):
            raise ValueError(
                f"overrides.{key}: not a field of {type(hf_config).__name__}; check the spelling"
            )
        setattr(hf_config, key, value)
    return hf_config


def build_causal_lm(config: ModelConfig, tokenizer: Any, seed: int = 0):
    """Build the base causal LM: ``from_pretrained`` when ``name_or_path`` is set, else a preset.

    A from-scratch model's vocabulary matches ``tokenizer`` (``len(tokenizer)``); its weights are
    initialised under ``seed`` so two builds with the same seed are identical.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if config.name_or_path:
        model = AutoModelForCausalLM.from_pretrained(
            config.name_or_path, trust_remote_code=config.trust_remote_code
        )
        if config.resize_token_embeddings:  # only when asked: see ModelConfig
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
            for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
                setattr(model.config, key, getattr(tokenizer, key))
        return model
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    hf_config = transformers_config(config, len(tokenizer), special_ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)
