"""A tiny memory model and chat-like data shared by the memory training tests and the DDP script."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from router_pipelines.models.memory import LoraSettings, MemoryConfig
from router_pipelines.pipelines.memory.config import MemoryTrainingConfig
from router_pipelines.pipelines.memory.training import build_memory_model

SEQ_LEN = 16


class MaskedChats(Dataset):
    """``n`` sequences whose first 6 positions are a "prompt" (label -100)."""

    def __init__(self, n: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randint(0, 128, (n, 1), generator=generator)
        stride = torch.randint(1, 4, (n, 1), generator=generator)
        self.ids = (start + stride * torch.arange(SEQ_LEN)) % 128

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.ids[index]
        labels = ids.clone()
        labels[:6] = -100
        return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def tiny_memory_model(
    lora: bool = False, top_k: int = 2, seed: int = 0, router_input: str = "mean"
):
    from tiny_models import tiny_gpt2

    torch.manual_seed(0)
    base = tiny_gpt2()
    adapter = MemoryConfig(
        num_memory_tokens=64, chapter_size=8, top_k=top_k, num_heads=2, router_input=router_input
    )
    return build_memory_model(base, adapter, LoraSettings(enabled=lora, r=4), False, seed)


def tiny_training(output_dir: str, **overrides) -> MemoryTrainingConfig:
    values = dict(
        output_dir=output_dir,
        max_steps=6,
        batch_size=4,
        memory_lr=1e-2,
        lora_lr=5e-3,
        learning_rate=1e-3,
        scheduler="cosine",
        warmup_steps=1,
        cpu=True,
        mixed_precision="no",
        eval_steps=3,
        eval_batch_size=4,
        save_steps=2,
        logging_steps=1,
        progress_bar=False,
        load_balance_coef=0.05,
    )
    return MemoryTrainingConfig(**{**values, **overrides})
