"""The Accelerator both the engine and the LR finder run on, and model switches."""

from __future__ import annotations

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import GradientAccumulationPlugin, parse_flag_from_env
from torch import nn

from router_pipelines.training.config import TrainingConfig


def resolve_mixed_precision(value: str, cpu: bool) -> str:
    """``auto`` becomes ``bf16`` on a CUDA device with bf16 support, else ``no``.

    ``no`` (fp32) on MPS and the CPU; ``accelerate launch --cpu`` counts as ``cpu``.
    """
    if value != "auto":
        return value
    forced_cpu = cpu or parse_flag_from_env("ACCELERATE_USE_CPU")
    if not forced_cpu and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def build_accelerator(config: TrainingConfig) -> Accelerator:
    """An ``Accelerator`` for ``config``; the device is CUDA, then MPS, then the CPU.

    Launcher settings (``accelerate launch``, an FSDP/DeepSpeed config file) are read
    by Accelerate from the environment; ``mixed_precision`` here takes precedence.
    """
    return Accelerator(
        cpu=config.cpu,
        mixed_precision=resolve_mixed_precision(config.mixed_precision, config.cpu),
        gradient_accumulation_plugin=accumulation_plugin(config),
        # The schedule counts optimizer steps, whatever the number of processes
        # (Accelerate would otherwise step it once per process).
        step_scheduler_with_optimizer=False,
        # Families that train part of the model per step (one bit width's quantizers) need
        # DDP to tolerate parameters without gradients; it costs a graph walk, so opt-in.
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=config.ddp_find_unused_parameters)
        ],
    )


def accumulation_plugin(config: TrainingConfig) -> GradientAccumulationPlugin:
    """k micro-batches per step, even across an epoch end (exact resume needs it)."""
    return GradientAccumulationPlugin(
        num_steps=config.gradient_accumulation_steps, sync_with_dataloader=False
    )


def claim_gradient_state(accelerator: Accelerator, config: TrainingConfig) -> None:
    """Re-apply ``config``'s accumulation settings to Accelerate's process-wide state.

    ``GradientState`` is a singleton: building a second ``Accelerator`` (another
    Trainer, the LR finder) overwrites the accumulation steps of the first. Call this
    right before a loop starts.
    """
    accelerator.gradient_state.plugin_kwargs = accumulation_plugin(config).to_kwargs()
    accelerator.gradient_state.sync_gradients = True


def enable_gradient_checkpointing(model: nn.Module) -> None:
    """Turn on activation (gradient) checkpointing, or raise naming the config field."""
    # transformers 5 renamed the method; older models and custom modules use the old name.
    for name in ("activation_checkpointing_enable", "gradient_checkpointing_enable"):
        enable = getattr(model, name, None)
        if callable(enable):
            enable()
            return
    raise ValueError(
        f"gradient_checkpointing: true, but {type(model).__name__} has no "
        "gradient_checkpointing_enable(); set it to false or add the method to the model"
    )
