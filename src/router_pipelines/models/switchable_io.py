"""Saving and loading a :class:`~router_pipelines.models.switchable.SwitchableLM` folder.

A folder holds ``config.json`` (the transformers config), ``switchable_config.json`` (the
:class:`SwitchableConfig` it was swapped with) and ``model.safetensors`` (every weight,
quantizer step and ``initialized`` flag; each tied tensor once).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file, save_model

from router_pipelines.config import config_from_dict
from router_pipelines.models.hf_files import CONFIG_NAME, load_hf_config, read_json_file
from router_pipelines.models.switchable_swap import SwitchableConfig
from router_pipelines.storage import WEIGHTS_NAME, load_weights, shared_storage_once

if TYPE_CHECKING:
    from router_pipelines.models.switchable import SwitchableLM

SWITCHABLE_CONFIG_NAME = "switchable_config.json"


def save_switchable(
    model: SwitchableLM,
    directory: str | Path,
    state_dict: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Write ``model`` into ``directory`` (created if needed; a plain write, the caller makes
    it atomic if it needs to be).

    Args:
        model: the model to save; its own state dict (keys ``model.…``) is written.
        directory: the folder.
        state_dict: replaces the model's state dict, e.g. one gathered by Accelerate under
            FSDP / ZeRO-3 (HF's ``save_pretrained`` argument).
    """
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.model.config.save_pretrained(path)
    config_json = json.dumps(dataclasses.asdict(model.switchable_config), indent=2)
    (path / SWITCHABLE_CONFIG_NAME).write_text(config_json + "\n", encoding="utf-8")
    if state_dict is None:
        save_model(model, str(path / WEIGHTS_NAME))  # drops tied duplicates itself
    else:
        save_file(shared_storage_once(state_dict), str(path / WEIGHTS_NAME), {"format": "pt"})


def load_switchable(
    cls: type[SwitchableLM], directory: str | Path, device: str | torch.device = "cpu"
) -> SwitchableLM:
    """Rebuild a model written by :func:`save_switchable` (local files only, no remote code).

    Builds the architecture with ``AutoModelForCausalLM.from_config``, swaps it with the saved
    :class:`SwitchableConfig` and loads the weights strictly (tie-aware:
    :func:`router_pipelines.storage.load_weights`).

    Raises:
        FileNotFoundError: a file of the folder is missing, naming it.
        ValueError: a config file that does not parse or fit, or weights that do not match,
            naming the file (and the key).
    """
    from transformers import AutoModelForCausalLM

    path = Path(directory)
    for name in (CONFIG_NAME, SWITCHABLE_CONFIG_NAME, WEIGHTS_NAME):
        if not (path / name).is_file():
            raise FileNotFoundError(
                f"directory: {path} has no {name}; expected a SwitchableLM.save_pretrained output"
            )
    switchable_file = path / SWITCHABLE_CONFIG_NAME
    switchable_config = config_from_dict(
        SwitchableConfig, read_json_file(switchable_file), str(switchable_file)
    )
    model = AutoModelForCausalLM.from_config(load_hf_config(path))
    switchable = cls.from_base(model, switchable_config)
    load_weights(switchable, path / WEIGHTS_NAME, strict=True)
    return switchable.to(device)


def load_switchable_model(directory: str | Path, trust_remote_code: bool = False) -> SwitchableLM:
    """The model-bundle loader of the ``switchable`` family (see ``models.bundle``).

    ``trust_remote_code`` is accepted for the loader contract and ignored: the architecture
    is always built from the installed transformers classes.
    """
    del trust_remote_code
    from router_pipelines.models.switchable import SwitchableLM

    return load_switchable(SwitchableLM, directory)
