"""Tiny GPT-2 and synthetic data shared by the training tests and the DDP script."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

VOCAB, SEQ_LEN = 128, 16


def tiny_gpt2(seed: int = 0, dropout: float = 0.0) -> GPT2LMHeadModel:
    """A 2-layer, 32-wide GPT-2 initialised from ``seed``."""
    torch.manual_seed(seed)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=32,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
    )
    return GPT2LMHeadModel(config)


class SyntheticLM(Dataset):
    """``n`` sequences of a learnable pattern (token t+1 = token t + step mod vocab).

    Items are dicts of 1-D LongTensors of length SEQ_LEN.
    """

    def __init__(self, n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=generator)
        stride = torch.randint(1, 4, (n, 1), generator=generator)
        self.input_ids = (start + stride * torch.arange(SEQ_LEN)) % VOCAB

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.input_ids[index]
        return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


class Crash(Exception):
    """A simulated kill of the training process."""


def crash_at(step_to_crash: int):
    """``causal_lm_loss`` that raises :class:`Crash` at optimizer step ``step_to_crash``."""
    from router_pipelines.training import causal_lm_loss

    def loss_fn(model, batch, step):
        if step == step_to_crash:
            raise Crash(f"killed at step {step}")
        return causal_lm_loss(model, batch, step)

    return loss_fn
