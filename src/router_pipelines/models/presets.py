"""Named model presets (``debug``, ``tiny``, ``small``) and the causal-LM builder.

A preset fixes the shape; the architecture (GPT-2 by default, Llama or Qwen2) is chosen
separately, so ``small`` means the same size in every architecture. ``small`` is the ~30M
from-scratch model of the Dynamic Transformer study: 8 layers, hidden 384, intermediate 1024.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router_pipelines.config import check_choice

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
    max_positions: int = 1024  # context length of a from-scratch model
    dropout: float = 0.0  # residual/attention/embedding dropout of a from-scratch model
    overrides: dict[str, Any] = field(default_factory=dict)  # extra transformers config fields

    def __post_init__(self) -> None:
        check_choice("preset", self.preset, PRESETS)
        check_choice("architecture", self.architecture, ARCHITECTURES)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout!r}")
        if self.max_positions < 1:
            raise ValueError(f"max_positions: must be >= 1, got {self.max_positions!r}")


def transformers_config(config: ModelConfig, vocab_size: int, special_ids: dict[str, int | None]):
    """The transformers ``PretrainedConfig`` for a from-scratch preset model."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    shape = PRESETS[config.preset]
    if config.architecture == "gpt2":
        hf_config = GPT2Config(
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
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if special_ids.get(key) is not None:
            setattr(hf_config, key, special_ids[key])
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
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer))
        return model
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    hf_config = transformers_config(config, len(tokenizer), special_ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)
