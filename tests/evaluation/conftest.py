import pytest
import torch
from torch.utils.data import Dataset
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM

VOCAB_SIZE = 128


class ListDataset(Dataset):
    """A map-style dataset over a list of ``{"input_ids", "labels", "attention_mask"}``."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


def tiny_gpt2_config() -> GPT2Config:
    # n_embd=64 and n_inner=256 keep every linear's in_features a multiple of 32 and its
    # out_features a multiple of 16, as the CPU int4 kernel needs.
    return GPT2Config(
        n_layer=2,
        n_embd=64,
        n_head=2,
        vocab_size=VOCAB_SIZE,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )


@pytest.fixture
def tiny_switchable() -> SwitchableLM:
    """A 2-block GPT-2 with switchable widths 2/4/8 (8-bit activations), in eval mode."""
    torch.manual_seed(0)
    base = GPT2LMHeadModel(tiny_gpt2_config())
    return SwitchableLM.from_base(base, SwitchableConfig(bit_widths=[2, 4, 8])).eval()


@pytest.fixture
def tiny_switchable_tables() -> SwitchableLM:
    """``tiny_switchable`` with its embeddings and (tied) LM head quantized too."""
    torch.manual_seed(0)
    base = GPT2LMHeadModel(tiny_gpt2_config())
    config = SwitchableConfig(bit_widths=[2, 4, 8], quantize_lm_head=True, quantize_embeddings=True)
    return SwitchableLM.from_base(base, config).eval()


@pytest.fixture
def lm_dataset() -> ListDataset:
    """Four seeded sequences of 16 tokens, all positions scored."""
    generator = torch.Generator().manual_seed(0)
    items = []
    for _ in range(4):
        input_ids = torch.randint(0, VOCAB_SIZE, (16,), generator=generator)
        items.append(
            {
                "input_ids": input_ids,
                "labels": input_ids.clone(),
                "attention_mask": torch.ones(16, dtype=torch.long),
            }
        )
    return ListDataset(items)
