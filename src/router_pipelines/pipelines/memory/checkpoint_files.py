"""The seed's checkpoint layout on the shared engine, added by a callback (the engine stays as is).

The engine's ``checkpoint-<step>/`` already holds ``trainer_state.json``, the weights
(``model.safetensors``: with ``save_only_trainable``, the adapter and LoRA only),
``optimizer.bin``, ``scheduler.bin`` and the RNG states. Seed 002 adds two files, which
:class:`SeedCheckpointFiles` writes into every checkpoint once the engine has published it:

* ``config.yaml``: the memory config, the LoRA settings and the training config (the seed's
  "full configuration");
* ``consolidated.safetensors``: every weight of the model (base, LoRA, memory) under the
  :class:`~router_pipelines.models.memory.MemoryAdapter`'s names, the seed's ``model.pt``
  "for inference convenience": :func:`load_consolidated` rebuilds the model from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from router_pipelines.models.memory import LoraSettings, MemoryAdapter, MemoryConfig, apply_lora
from router_pipelines.storage import atomic_file
from router_pipelines.training import TrainerCallback
from router_pipelines.training.checkpoint import list_checkpoints

CONFIG_YAML = "config.yaml"
CONSOLIDATED = "consolidated.safetensors"


def seed_config(adapter: MemoryConfig, lora: LoraSettings, training: Any) -> dict[str, Any]:
    """The ``config.yaml`` content: ``{"memory": ..., "lora": ..., "training": ...}``."""
    return {"memory": asdict(adapter), "lora": asdict(lora), "training": asdict(training)}


class SeedCheckpointFiles(TrainerCallback):
    """Adds ``config.yaml`` and ``consolidated.safetensors`` to each checkpoint of the run.

    Set ``trainer`` after the Trainer exists (the callback needs its accelerator, model and
    run folder). Called on every process: gathering the full state dict is a collective call
    under FSDP; only the main process writes. A checkpoint that already has both files is left
    as it is, so resuming does not rewrite the earlier ones.
    """

    def __init__(self, config: Mapping[str, Any], consolidated: bool = True) -> None:
        self.config, self.consolidated = dict(config), consolidated
        self.trainer: Any = None

    def on_step_end(self, state: Any, logs: dict[str, float]) -> None:
        self._complete()

    def on_train_end(self, state: Any) -> None:
        self._complete()  # the engine's save_at_end comes after the last step_end

    def _complete(self) -> None:
        if self.trainer is None:
            return
        wanted = [CONFIG_YAML] + ([CONSOLIDATED] if self.consolidated else [])
        pending = [
            path
            for _, path in list_checkpoints(self.trainer.run_dir)
            if not all((path / name).is_file() for name in wanted)
        ]
        if not pending:
            return
        accelerator = self.trainer.accelerator
        state_dict = accelerator.get_state_dict(self.trainer.model) if self.consolidated else None
        if not accelerator.is_main_process:
            return
        for path in pending:
            with atomic_file(path / CONFIG_YAML) as staging:
                staging.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
            if state_dict is not None:
                write_consolidated(state_dict, path / CONSOLIDATED)


def write_consolidated(state_dict: Mapping[str, torch.Tensor], target: Path) -> None:
    """Write every tensor of ``state_dict`` (tied aliases once) as one safetensors file."""
    from safetensors.torch import save_file

    from router_pipelines.storage import shared_storage_once

    tensors = {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in shared_storage_once(dict(state_dict)).items()
    }
    with atomic_file(target) as staging:
        save_file(tensors, str(staging), metadata={"format": "pt"})


def load_consolidated(checkpoint: str | Path, base: nn.Module) -> MemoryAdapter:
    """Rebuild the model of a checkpoint from its ``config.yaml`` and ``consolidated.safetensors``.

    Args:
        checkpoint: a ``checkpoint-<step>`` folder.
        base: a causal LM of the same architecture (its weights are overwritten).

    Raises:
        ValueError: the file's weights do not fit the model built from ``config.yaml``.
    """
    from router_pipelines.config import config_from_dict
    from router_pipelines.storage import load_weights

    checkpoint = Path(checkpoint)
    config = yaml.safe_load((checkpoint / CONFIG_YAML).read_text(encoding="utf-8"))
    adapter = config_from_dict(MemoryConfig, config["memory"], f"{CONFIG_YAML}: memory")
    lora = config_from_dict(LoraSettings, config["lora"], f"{CONFIG_YAML}: lora")
    model = MemoryAdapter(apply_lora(base, lora), adapter)
    load_weights(model, checkpoint / CONSOLIDATED)  # strict, tie-aware
    return model.eval()
