"""The seed's checkpoint layout on the shared engine, added by an engine callback (``on_save``).

The engine's ``checkpoint-<step>/`` already holds ``trainer_state.json``, the weights
(``model.safetensors``: with ``save_only_trainable``, the adapter and LoRA only),
``optimizer.bin``, ``scheduler.bin`` and the RNG states. Seed 002 adds two files, which
:class:`SeedCheckpointFiles` writes into every checkpoint while the engine writes it:

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

CONFIG_YAML = "config.yaml"
CONSOLIDATED = "consolidated.safetensors"


def seed_config(adapter: MemoryConfig, lora: LoraSettings, training: Any) -> dict[str, Any]:
    """The ``config.yaml`` content: ``{"memory": ..., "lora": ..., "training": ...}``."""
    return {"memory": asdict(adapter), "lora": asdict(lora), "training": asdict(training)}


class SeedCheckpointFiles(TrainerCallback):
    """Adds ``config.yaml`` and ``consolidated.safetensors`` to each checkpoint of the run, in
    the engine's ``on_save`` (inside the checkpoint's temporary folder, so a checkpoint holds
    both or does not exist). Gathering the full state dict is a collective call under FSDP, so
    it runs on every process; only the main process writes."""

    def __init__(self, config: Mapping[str, Any], consolidated: bool = True) -> None:
        self.config, self.consolidated = dict(config), consolidated

    def on_save(self, state: Any, checkpoint: Path, accelerator: Any, model: Any) -> None:
        state_dict = accelerator.get_state_dict(model) if self.consolidated else None
        if not accelerator.is_main_process:
            return
        with atomic_file(checkpoint / CONFIG_YAML) as staging:
            staging.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        if state_dict is not None:
            write_consolidated(state_dict, checkpoint / CONSOLIDATED)


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
