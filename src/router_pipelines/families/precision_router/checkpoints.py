"""The seed's per-epoch router checkpoints, by name, as an engine callback.

The engine checkpoints by step (``checkpoint-<step>/``, router weights only with
``save_only_trainable``) and keeps the best router by validation loss in ``best/``; the seed
names its files by epoch (``router_checkpoint_epoch_N.pt``). At the end of every epoch this
callback writes the routers alone (:meth:`~LayerwiseQuantizeForCausalLM.save_router`: the
config JSON and ``router.safetensors``, a few KB) to ``<run>/router_checkpoint_epoch_<n>/``,
so both spellings exist without changing what the engine writes for anyone else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from router_pipelines.training.callbacks import TrainerCallback

logger = logging.getLogger(__name__)

EPOCH_CHECKPOINT = "router_checkpoint_epoch_{epoch}"


class EpochRouterCheckpoints(TrainerCallback):
    """Save ``router``'s routers at the end of each epoch of ``steps_per_epoch`` steps.

    Args:
        router: the :class:`LayerwiseQuantizeForCausalLM` being trained (its routers are
            the trainable parameters; the same object the engine steps).
        steps_per_epoch: optimizer steps per epoch.
        directory: where the epoch folders go (set to the engine's ``run_dir`` once the
            trainer exists); ``main_process``: only the main process writes.
    """

    def __init__(self, router: Any, steps_per_epoch: int, directory: str | Path | None = None):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch: expected >= 1, got {steps_per_epoch}")
        self.router = router
        self.steps_per_epoch = steps_per_epoch
        self.directory = None if directory is None else Path(directory)
        self.main_process = True
        self.saved: list[Path] = []

    def on_step_end(self, state: Any, logs: dict[str, float]) -> None:
        del logs
        if state.global_step % self.steps_per_epoch or not self.main_process:
            return
        if self.directory is None:
            raise ValueError("directory: set it (the trainer's run_dir) before training")
        epoch = state.global_step // self.steps_per_epoch
        path = self.directory / EPOCH_CHECKPOINT.format(epoch=epoch)
        getattr(self.router, "module", self.router).save_router(path)
        self.saved.append(path)
        logger.info("Checkpoint saved: %s", path)
