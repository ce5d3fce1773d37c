"""The Accelerator the engine runs on, the precision it really uses, and module modes."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from accelerate.utils import GradientAccumulationPlugin, parse_flag_from_env
from torch import nn

from router_pipelines.config import check_choice
from router_pipelines.training.config import COMPILE_MODES, TrainingConfig, check_compile_backend

ModuleModes = list[tuple[nn.Module, bool]]


def resolve_mixed_precision(value: str, cpu: bool) -> str:
    """``auto`` becomes ``bf16`` on a CUDA device with bf16 support, else ``no``.

    ``no`` (fp32) on MPS and the CPU; ``accelerate launch --cpu`` counts as ``cpu``.
    """
    if value != "auto":
        return value
    if not _forced_cpu(cpu) and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def _forced_cpu(cpu: bool) -> bool:
    return cpu or parse_flag_from_env("ACCELERATE_USE_CPU")


def default_device_type(cpu: bool) -> str:
    """The device type Accelerate picks for one process: CUDA, then MPS, then the CPU."""
    if _forced_cpu(cpu):
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass(frozen=True)
class PrecisionPlan:
    """What ``mixed_precision`` becomes on a device."""

    requested: str  # the config value: auto | no | fp16 | bf16
    effective: str  # the autocast really used: no (fp32) | fp16 | bf16
    device: str  # cpu | cuda | mps | ...
    note: str | None  # why effective differs from the request, or a caveat worth a warning


def precision_plan(config: TrainingConfig, device_type: str | None = None) -> PrecisionPlan:
    """The precision ``config`` really trains in on ``device_type`` (default: this machine's).

    Mirrors Accelerate 1.15 (``Accelerator.__init__``): fp16 autocast exists only off the
    CPU (on a CPU ``fp16`` trains in fp32 without a word), bf16 autocast runs on a CPU.
    """
    device = device_type or default_device_type(config.cpu)
    asked = resolve_mixed_precision(config.mixed_precision, config.cpu or device == "cpu")
    effective, note = asked, None
    if asked == "fp16" and device == "cpu":
        effective = "no"
        note = "Accelerate has no fp16 autocast on the CPU"
    elif asked == "bf16" and device == "cpu":
        note = (
            "bf16 autocast runs on the CPU, but was measured 14x slower than fp32 on this "
            "project's CPU (docs/training.md); mixed_precision: no is usually faster there"
        )
    return PrecisionPlan(config.mixed_precision, effective, device, note)


def describe_precision(config: TrainingConfig, device_type: str | None = None) -> str:
    """One line naming the requested and the effective precision and the device; no model needed.

    E.g. ``"mixed_precision 'fp16' on cpu: training runs in fp32 (Accelerate has no fp16
    autocast on the CPU, ...)"``. A pre-run validation can log it; the Trainer warns with it
    when :attr:`PrecisionPlan.note` is set.
    """
    plan = precision_plan(config, device_type)
    shown = {"no": "fp32", "fp16": "fp16 autocast", "bf16": "bf16 autocast"}[plan.effective]
    line = f"mixed_precision {plan.requested!r} on {plan.device}: training runs in {shown}"
    return f"{line} ({plan.note})" if plan.note else line


def build_accelerator(config: TrainingConfig) -> Accelerator:
    """An ``Accelerator`` for ``config``; the device is CUDA, then MPS, then the CPU.

    Launcher settings (``accelerate launch``, an FSDP/DeepSpeed config file) are read
    by Accelerate from the environment; ``mixed_precision`` here takes precedence.
    """
    return Accelerator(
        cpu=config.cpu,
        mixed_precision=resolve_mixed_precision(config.mixed_precision, config.cpu),
        # The engine compiles the model itself, in place (compile_model): Accelerate's wrapper
        # would prefix every state-dict key with "_orig_mod." in checkpoints and best/.
        dynamo_backend="no",
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


@dataclass(frozen=True)
class CompileSettings:
    """How the engine compiles the model's forward: ``torch.compile(backend=..., mode=...)``."""

    backend: str
    mode: str | None
    source: str  # "torch_compile" (the config) or "ACCELERATE_DYNAMO_BACKEND" (the launcher)
    fullgraph: bool = False  # the launcher's --dynamo_use_fullgraph
    dynamic: bool | None = None  # the launcher's --dynamo_use_dynamic (None: torch decides)


def compile_settings(config: TrainingConfig) -> CompileSettings | None:
    """The compile the run gets, or None.

    ``torch_compile`` (or a named backend / mode) wins; otherwise ``accelerate launch
    --dynamo_backend`` (``ACCELERATE_DYNAMO_BACKEND``, ``_MODE``, ``_USE_FULLGRAPH``,
    ``_USE_DYNAMIC``) decides, parsed as Accelerate's ``TorchDynamoPlugin`` parses them, so a
    launcher setting is not dropped silently. ``--dynamo_use_regional_compilation`` is refused:
    the engine compiles the whole forward in place.
    """
    if config.torch_compile:
        return CompileSettings(
            config.torch_compile_backend or "inductor", config.torch_compile_mode, "torch_compile"
        )
    backend = os.environ.get("ACCELERATE_DYNAMO_BACKEND", "no").strip().lower()
    if backend in ("", "no"):
        return None
    check_compile_backend("ACCELERATE_DYNAMO_BACKEND", backend)
    mode = os.environ.get("ACCELERATE_DYNAMO_MODE") or None
    if mode is not None:
        check_choice("ACCELERATE_DYNAMO_MODE", mode, COMPILE_MODES)
    if _env_flag("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"):
        raise ValueError(
            "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION is set (accelerate launch "
            "--dynamo_use_regional_compilation), but the engine compiles the whole forward in "
            "place; unset it, or set torch_compile in the training config"
        )
    dynamic = None
    if os.environ.get("ACCELERATE_DYNAMO_USE_DYNAMIC") is not None:
        dynamic = _env_flag("ACCELERATE_DYNAMO_USE_DYNAMIC")
    return CompileSettings(
        backend,
        mode,
        "ACCELERATE_DYNAMO_BACKEND",
        fullgraph=_env_flag("ACCELERATE_DYNAMO_USE_FULLGRAPH"),
        dynamic=dynamic,
    )


def _env_flag(name: str) -> bool:
    """A boolean environment variable, read by Accelerate's own ``parse_flag_from_env`` (yes/
    true/on/1 or no/false/off/0); anything else raises naming the variable and the value."""
    try:
        return bool(parse_flag_from_env(name, False))
    except ValueError:
        value = os.environ.get(name)
        raise ValueError(f"{name}={value!r} is not a boolean (use true or false)") from None


def compile_model(model: nn.Module, settings: CompileSettings) -> None:
    """Compile ``model``'s forward in place (``nn.Module.compile``).

    In place rather than ``torch.compile(model)``: the module keeps its type, attributes and
    state-dict keys, so checkpoints, ``best/``, the returned model and a family's
    ``model.set_precision(...)`` are those of an uncompiled run. Only calls of the module itself
    (``model(**batch)``) run compiled; other methods a loss calls stay eager.
    """
    model.compile(
        backend=settings.backend,
        mode=settings.mode,
        fullgraph=settings.fullgraph,
        dynamic=settings.dynamic,
    )


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


def set_train_mode(model: nn.Module, frozen_modules_eval: bool) -> None:
    """``model.train()``; then, with ``frozen_modules_eval``, every frozen sub-module ``eval()``.

    A sub-module is frozen when it has parameters and none of them (at any depth) requires a
    gradient: a frozen base under a trained router or adapter keeps its dropout off, the way
    it was trained. Parameter-less modules (a Dropout) follow their parent.
    """
    model.train()
    if frozen_modules_eval:
        _eval_frozen(model)


def _eval_frozen(module: nn.Module) -> None:
    has_params, trainable = False, False
    for param in module.parameters():
        has_params = True
        if param.requires_grad:
            trainable = True
            break
    if has_params and not trainable:
        module.eval()
        return
    for child in module.children():
        _eval_frozen(child)


def module_modes(model: nn.Module) -> ModuleModes:
    """The train/eval flag of every sub-module, for :func:`restore_module_modes`."""
    return [(module, module.training) for module in model.modules()]


def restore_module_modes(modes: ModuleModes) -> None:
    for module, training in modes:
        module.training = training
