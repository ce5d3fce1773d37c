"""Tiny transformers causal LMs shared by the model and family tests (import as
``from tiny_models import ...``: pytest puts ``tests/`` on the path for its conftest)."""

from __future__ import annotations

from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB_SIZE = 128


def tiny_gpt2() -> GPT2LMHeadModel:
    """2 layers, 32 wide, tied LM head, no dropout (train-mode forwards stay deterministic);
    in eval mode, initialised from the current torch seed."""
    config = GPT2Config(
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB_SIZE,
        n_positions=32,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).eval()


def tiny_llama(tie_word_embeddings: bool = False) -> LlamaForCausalLM:
    """2 layers, 32 wide, in eval mode; the LM head is untied unless asked."""
    config = LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        vocab_size=VOCAB_SIZE,
        tie_word_embeddings=tie_word_embeddings,
    )
    return LlamaForCausalLM(config).eval()
