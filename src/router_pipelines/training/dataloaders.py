"""Data loaders whose order is a pure function of (seed, epoch).

Exact resume needs the batch order of any epoch to be reproducible without
replaying the epochs before it, and iterating a loader must not draw from the
global torch RNG (dropout shares it). Hence:

* :class:`EpochSeededSampler` shuffles epoch ``e`` with a fresh generator seeded
  ``seed + e`` (``torch.utils.data.RandomSampler`` keeps one generator whose state
  depends on every earlier epoch);
* each ``DataLoader`` gets its own seeded ``generator``: PyTorch draws the worker base
  seed from it at every ``iter()``, instead of from the global RNG.

Datasets are map-style (``__len__`` + ``__getitem__``) and yield dicts of 1-D
LongTensors of one length T; the default collate stacks them to (B, T).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler


class EpochSeededSampler(Sampler[int]):
    """Random permutation of ``range(num_samples)`` seeded by ``seed + epoch``.

    Every process builds the same permutation; Accelerate then shards the batches
    (process ``r`` of ``n`` gets batches ``r, r + n, ...``).
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (Accelerate's loaders also call this)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from torch.randperm(self.num_samples, generator=generator).tolist()

    def __len__(self) -> int:
        return self.num_samples


def check_map_dataset(name: str, dataset: object) -> int:
    """Return ``len(dataset)``; raise ``ValueError`` naming ``name`` if it is not map-style."""
    if isinstance(dataset, IterableDataset) or not isinstance(dataset, Sized):
        raise ValueError(
            f"{name}: expected a map-style dataset with __len__ and __getitem__ (exact resume "
            f"needs random access), got {type(dataset).__name__}"
        )
    if len(dataset) == 0:
        raise ValueError(f"{name}: is empty")
    return len(dataset)


def build_train_dataloader(
    dataset: Dataset, batch_size: int, seed: int, num_workers: int
) -> tuple[DataLoader, EpochSeededSampler]:
    """Shuffled training loader; drops the last partial batch so every step has B examples."""
    sampler = EpochSeededSampler(check_map_dataset("train_dataset", dataset), seed)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    return loader, sampler


def build_eval_dataloader(
    dataset: Dataset, batch_size: int, seed: int, num_workers: int
) -> DataLoader:
    """Sequential evaluation loader keeping every example."""
    check_map_dataset("eval_dataset", dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )


def count_tokens(batch: dict[str, torch.Tensor]) -> torch.Tensor | int:
    """Input tokens in a batch: ``attention_mask.sum()`` (a device tensor: no host sync),
    else ``input_ids.numel()``."""
    if "attention_mask" in batch:
        return batch["attention_mask"].sum()
    if "input_ids" in batch:
        return batch["input_ids"].numel()
    return 0


def micro_batches(
    accelerator: Any, loader: DataLoader, sampler: EpochSeededSampler, state: Any
) -> Iterator[dict[str, torch.Tensor]]:
    """Training micro-batches from ``state``'s data position on, epoch after epoch.

    ``state`` (a :class:`~router_pipelines.training.state.TrainerState`) is advanced as
    batches are drawn: ``batch_in_epoch`` counts the micro-batches of ``state.epoch`` consumed;
    a resumed run skips them with ``accelerator.skip_first_batches``.
    """
    batches_per_epoch = len(loader)
    while True:
        sampler.set_epoch(state.epoch)
        loader.set_epoch(state.epoch)
        epoch_loader = loader
        if state.batch_in_epoch:
            epoch_loader = accelerator.skip_first_batches(loader, state.batch_in_epoch)
        for batch in epoch_loader:
            state.batch_in_epoch += 1
            if state.batch_in_epoch == batches_per_epoch:
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
            yield batch
