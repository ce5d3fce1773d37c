"""Model weights in checkpoints and ``best/``: full, trainable parameters only, or a peft adapter.

With ``save_only_trainable`` a checkpoint's ``model.safetensors`` and ``best/`` hold only the
parameters with ``requires_grad`` (a router or adapter on a frozen base): Accelerate's
``register_save_state_pre_hook`` drops the others from the state dict it is about to write,
and a load pre-hook loads such a checkpoint itself, checking that exactly the trainable
parameters were in it, before Accelerate loads optimizer, scheduler and RNG states. The caller
builds the frozen part (the same way as for the run that saved); buffers are not stored.

A peft ``PeftModel`` saves its ``best/`` with its own ``save_pretrained`` (the adapter only:
``adapter_model.safetensors`` + ``adapter_config.json``) and is reloaded with peft's
``load_peft_weights`` / ``set_peft_model_state_dict``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import safe_open
from torch import nn

from router_pipelines.storage import WEIGHTS_INDEX_NAME, WEIGHTS_NAME, load_weights

CONFIG_NAME = "config.json"  # the resolved TrainingConfig in a checkpoint
ADAPTER_CONFIG_NAME = "adapter_config.json"  # peft's marker file
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def trainable_names(model: nn.Module) -> set[str]:
    """State-dict names of the parameters that require a gradient (tied aliases included)."""
    return {n for n, p in model.named_parameters(remove_duplicate=False) if p.requires_grad}


def is_peft_model(model: nn.Module) -> bool:
    if "peft" not in sys.modules:  # a PeftModel cannot exist before peft is imported
        return False
    from peft import PeftModel

    return isinstance(model, PeftModel)


def register_weight_hooks(accelerator: Accelerator, save_only_trainable: bool) -> None:
    """Install the save hook (with ``save_only_trainable``) and, always, the load hook.

    The load hook is always there: a checkpoint written with ``save_only_trainable`` loads
    through it whatever this run's setting (the setting does not change the result).

    Raises:
        ValueError: ``save_only_trainable`` under FSDP/DeepSpeed, which write their own state.
    """
    if save_only_trainable:
        sharded = (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM)
        if accelerator.distributed_type in sharded:
            raise ValueError(
                f"save_only_trainable: not supported under {accelerator.distributed_type.value}, "
                "which writes its own sharded model state; set it to false"
            )
        accelerator.register_save_state_pre_hook(keep_trainable_hook)
    accelerator.register_load_state_pre_hook(make_load_hook())


def keep_trainable_hook(models: list[nn.Module], weights: list[dict[str, Any]], _: str) -> None:
    """Accelerate save pre-hook: drop every non-trainable entry from the state dicts to write."""
    for model, state_dict in zip(models, weights, strict=True):
        names = trainable_names(model)
        for key in [k for k in state_dict if k not in names]:
            del state_dict[key]


def make_load_hook() -> Callable[[list[nn.Module], str], None]:
    """Accelerate load pre-hook: a trainable-only checkpoint is loaded (and checked) here."""

    def load_trainable_hook(models: list[nn.Module], input_dir: str) -> None:
        if not checkpoint_is_trainable_only(input_dir):
            return  # a full checkpoint: Accelerate loads it, strictly
        for index, model in enumerate(models):
            suffix = f"_{index}" if index else ""
            load_trainable(model, Path(input_dir) / f"model{suffix}.safetensors")
        models.clear()  # loaded: Accelerate must not load them again

    return load_trainable_hook


def checkpoint_is_trainable_only(checkpoint: str | Path) -> bool:
    """Whether the checkpoint was written with ``save_only_trainable`` (read from its config)."""
    path = Path(checkpoint) / CONFIG_NAME
    if not path.is_file():
        return False
    return bool(json.loads(path.read_text(encoding="utf-8")).get("save_only_trainable", False))


def load_trainable(model: nn.Module, path: str | Path) -> None:
    """Load trainable-only weights from ``path`` (a file or folder) into ``model``.

    Raises:
        ValueError: when the file holds a parameter that is frozen or unknown here, or lacks a
            trainable one; both mean the model is not built like the one that saved.
    """
    names = trainable_names(model)
    extra = sorted(_saved_keys(path) - names)
    if extra:
        raise ValueError(
            f"{path}: holds weights that are not trainable parameters of this model "
            f"{extra[:5]}{' ...' if len(extra) > 5 else ''}; a trainable-only checkpoint loads "
            "onto a model whose trainable parameters are the ones it was saved from"
        )
    missing, _ = load_weights(model, path, strict=False)
    lost = sorted(set(missing) & names)
    if lost:
        raise ValueError(
            f"{path}: lacks trainable parameters {lost[:5]}{' ...' if len(lost) > 5 else ''}; "
            "it was saved from a model with other trainable parameters"
        )


def load_best_weights(model: nn.Module, best_dir: str | Path, trainable_only: bool) -> None:
    """Reload ``best/`` into the unwrapped ``model``: peft adapter, trainable-only or full.

    Raises:
        ValueError: the weights do not fit the model (naming the keys).
    """
    best_dir = Path(best_dir)
    if is_peft_model(model) and (best_dir / ADAPTER_CONFIG_NAME).is_file():
        _load_peft_adapter(model, best_dir)
    elif trainable_only:
        load_trainable(model, best_dir)
    else:
        load_weights(model, best_dir)


def _load_peft_adapter(model: nn.Module, best_dir: Path) -> None:
    from peft import load_peft_weights, set_peft_model_state_dict

    if not (best_dir / ADAPTER_WEIGHTS_NAME).is_file():  # never let peft look on the Hub
        raise FileNotFoundError(f"{best_dir}: no {ADAPTER_WEIGHTS_NAME}")
    adapter = load_peft_weights(str(best_dir), device="cpu")
    result = set_peft_model_state_dict(model, adapter, adapter_name=model.active_adapter)
    lost = sorted(set(result.missing_keys) & trainable_names(model))
    if result.unexpected_keys or lost:
        raise ValueError(
            f"{best_dir}: adapter does not match the model: unexpected keys "
            f"{sorted(result.unexpected_keys)[:5]}, missing trainable keys {lost[:5]}"
        )


def _saved_keys(path: str | Path) -> set[str]:
    path = Path(path)
    if path.is_dir():
        index = path / WEIGHTS_INDEX_NAME
        if index.is_file():
            return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no safetensors weights here")
    with safe_open(str(path), framework="pt") as handle:
        return set(handle.keys())
