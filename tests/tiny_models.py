"""Tiny models and data shared by the tests (import as ``from tiny_models import ...``:
pytest puts ``tests/`` on the path for its conftest)."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

VOCAB_SIZE = 128


def tiny_gpt2(**overrides: Any) -> GPT2LMHeadModel:
    """2 layers, 32 wide, tied LM head, no dropout (train-mode forwards stay deterministic);
    in eval mode, initialised from the current torch seed. ``overrides`` are GPT2Config fields."""
    config = GPT2Config(
        **{
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "n_layer": 2,
            "n_embd": 32,
            "n_head": 2,
            "vocab_size": VOCAB_SIZE,
            "n_positions": 32,
            "bos_token_id": 0,
            "eos_token_id": 0,
        }
        | overrides
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


class ListDataset(Dataset):
    """A map-style dataset over a list of ``{"input_ids", "labels", "attention_mask"}``."""

    def __init__(self, items: list[dict[str, Any]]) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.items[index]


def char_tokenizer():
    """A 28-token character tokenizer: ``<pad>``=0, ``<eos>``=1, ``a``..``z`` = 2..27."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, **{chr(97 + i): i + 2 for i in range(26)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
