"""Build and train a memory (or LoRA-only) model on the shared engine; used by the nodes and the
benchmark. No Kedro here: typed configs in, a ``TrainResult`` out."""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from router_pipelines.families.memory import (
    chapter_usage_figure,
    make_memory_loss,
    utilisation_callback,
)
from router_pipelines.models.memory import (
    LoraSettings,
    MemoryAdapter,
    MemoryConfig,
    apply_lora,
    freeze_base,
)
from router_pipelines.pipelines.memory.checkpoint_files import SeedCheckpointFiles
from router_pipelines.pipelines.memory.config import (
    LORA_PATTERN,
    MEMORY_PATTERN,
    MemoryTrainingConfig,
)
from router_pipelines.training import Trainer, TrainerCallback, causal_lm_loss

logger = logging.getLogger(__name__)

CHAT, TEXT = "chat", "text"  # the named eval sets: eval_chat_loss, eval_text_loss, ...


def build_memory_model(
    base: nn.Module,
    adapter: MemoryConfig | None,
    lora: LoraSettings,
    train_base: bool,
    seed: int,
) -> nn.Module:
    """A copy of ``base`` with LoRA (if enabled) and the memory adapter (if ``adapter``).

    ``adapter=None`` gives the LoRA-only baseline (a peft model, or the base itself). The base
    passed in is never modified.
    """
    torch.manual_seed(seed)
    return attach_adapters(copy.deepcopy(base), adapter, lora, train_base)


def attach_adapters(
    base: nn.Module, adapter: MemoryConfig | None, lora: LoraSettings, train_base: bool
) -> nn.Module:
    """``base`` itself (not a copy) with LoRA (if enabled) and the memory adapter (if
    ``adapter``), ``requires_grad`` set on what training updates: the model of
    :func:`build_memory_model`, without its seeding."""
    model = apply_lora(base, lora)
    if adapter is None:
        if not lora.enabled:
            for param in model.parameters():
                param.requires_grad_(True)
        return model
    model = MemoryAdapter(model, adapter)
    freeze_base(model, train_base)
    return model


def trainable_parameter_count(
    base_config: Any, adapter: MemoryConfig, lora: LoraSettings, train_base: bool
) -> int:
    """How many parameters training updates in the memory model of a base with the
    transformers config ``base_config``: memory + LoRA (+ the base's own with ``train_base``),
    counted on a weightless (``meta`` device) model built as :func:`build_memory_model` builds
    it. Tied weights count once, as in ``nn.Module.parameters``."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = attach_adapters(
            AutoModelForCausalLM.from_config(base_config), adapter, lora, train_base
        )
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def group_name(pattern: str) -> str:
    return {MEMORY_PATTERN: "memory", LORA_PATTERN: "lora", "default": "base"}.get(pattern, pattern)


class GroupLRAndStepTime(TrainerCallback):
    """Logs each parameter group's learning rate (``lr_memory``, ``lr_lora``, ``lr_base``) and
    the mean wall time of an optimizer step (``step_time_s``) every ``logging_steps``.

    The engine logs one ``lr`` (the default group) and ``tokens_per_s``; the family has three
    groups. Steps that evaluated are left out of the step time.
    """

    def __init__(self, log_fn: Callable[[Mapping[str, float], int], None] | None, every: int):
        self.log_fn, self.every = log_fn, max(int(every), 1)
        self.optimizer: Any = None  # set after the Trainer exists
        self.history: dict[str, list[tuple[int, float]]] = {}
        self._last: float | None = None
        self._times: list[float] = []  # since the last log
        self.step_times: list[float] = []  # the whole run

    def on_step_end(self, state: Any, logs: dict[str, float]) -> None:
        now = time.perf_counter()
        evaluated = any(key.startswith("eval_") for key in logs)
        if self._last is not None and not evaluated:
            self._times.append(now - self._last)
            self.step_times.append(now - self._last)
        step = state.global_step
        if step % self.every == 0 and self.optimizer is not None:
            record = {}
            for group in self.optimizer.param_groups:
                name = group.get("group_name", "default")
                if not name.endswith("/no_decay"):
                    record[f"lr_{group_name(name)}"] = float(group["lr"])
            if self._times:
                record["step_time_s"] = sum(self._times) / len(self._times)
                self._times = []
            for key, value in record.items():
                self.history.setdefault(key, []).append((step, value))
            if self.log_fn is not None:
                self.log_fn(record, step)
        self._last = time.perf_counter()

    @property
    def mean_step_time(self) -> float | None:
        """Mean seconds per optimizer step over the run (evaluation steps excluded)."""
        times = self.step_times
        return sum(times) / len(times) if times else None


def train_memory_model(
    model: nn.Module,
    training: MemoryTrainingConfig,
    train_set: Any,
    eval_sets: Mapping[str, Any],
    *,
    lora: bool,
    log_fn: Callable[[Mapping[str, float], int], None] | None = None,
    run_config: Mapping[str, Any] | None = None,
    on_counts: Callable[[torch.Tensor, int], None] | None = None,
    seed_config: Mapping[str, Any] | None = None,
) -> tuple[Any, GroupLRAndStepTime]:
    """Train ``model`` (a MemoryAdapter, or a LoRA-only baseline) on the engine.

    A MemoryAdapter trains on CE + router auxiliary loss and logs the utilisation of the
    ``chat`` eval set at each evaluation; a baseline trains on CE alone. With ``seed_config``
    (:func:`~.checkpoint_files.seed_config`) every checkpoint of a MemoryAdapter also gets the
    seed's ``config.yaml`` and, with ``training.save_consolidated``, ``consolidated.safetensors``.

    Returns:
        The engine's ``TrainResult`` and the callback holding lr / step-time histories.
    """
    is_memory = isinstance(model, MemoryAdapter)
    if is_memory:
        calibrate_routers(model, train_set, training)
    config = training.engine_config(lora=lora) if is_memory else _baseline_config(training, lora)
    loss_fn = make_memory_loss(training.coefs) if is_memory else causal_lm_loss
    eval_callbacks = []
    if is_memory and CHAT in eval_sets:
        eval_callbacks.append(
            utilisation_callback(CHAT, config.eval_max_batches, on_counts=on_counts)
        )
    timer = GroupLRAndStepTime(log_fn, config.logging_steps)
    callbacks: list[TrainerCallback] = [timer]
    if is_memory and seed_config is not None:
        callbacks.append(SeedCheckpointFiles(seed_config, training.save_consolidated))
    trainer = Trainer(
        model,
        loss_fn,
        train_set,
        dict(eval_sets) or None,
        config=config,
        log_fn=log_fn,
        callbacks=callbacks,
        eval_callbacks=eval_callbacks,
        run_config=dict(run_config or {}),
    )
    timer.optimizer = trainer.optimizer
    return trainer.train(), timer


def calibrate_routers(model: MemoryAdapter, train_set: Any, training: MemoryTrainingConfig) -> None:
    """Standardised routers' statistics from the first ``router_calibration_batches`` training
    batches, in dataset order (the same on every process, and again on resume, where the
    checkpoint then overwrites them with the trained values)."""
    from itertools import islice

    loader = torch.utils.data.DataLoader(train_set, batch_size=training.batch_size)
    count = model.calibrate_routers(islice(loader, training.router_calibration_batches))
    if count:
        logger.info("routers standardised on %d training sequences", count)


def _baseline_config(training: MemoryTrainingConfig, lora: bool) -> Any:
    """The engine config of a baseline without memory: LoRA at ``lora_lr``, or the whole base."""
    config = training.engine_config(lora=False)
    lr = (training.lora_lr if lora else training.base_model_lr) or training.learning_rate
    return type(config)(
        **{
            **{name: getattr(config, name) for name in type(config).__dataclass_fields__},
            "learning_rate": lr,
            "param_groups": [],
            "save_only_trainable": lora,
        }
    )


def run_lr_finder(
    model: nn.Module, train_set: Any, training: MemoryTrainingConfig, finder: Any, lora: bool
) -> Any:
    """The engine's LR range test on ``model`` in units of ``memory_lr`` (the other groups keep
    their ratio to it); with ``finder.use_suggestion`` the suggestion becomes ``memory_lr``.

    Returns:
        The ``LRFinderResult``; ``model`` comes back unchanged.
    """
    from dataclasses import replace

    from router_pipelines.training import find_lr

    calibrate_routers(model, train_set, training)
    config = training.engine_config(lora=lora)
    memory_lr = training.memory_lr or training.learning_rate
    sweep = replace(config, learning_rate=memory_lr)  # the multiplier is lr / memory_lr
    result = find_lr(
        model,
        make_memory_loss(training.coefs),
        train_set,
        sweep,
        start_lr=finder.start_lr,
        end_lr=finder.end_lr,
        num_steps=finder.num_steps,
    )
    if finder.use_suggestion and result.suggestion is not None:
        training.memory_lr = float(result.suggestion)
    return result


def log_usage_figure(layer_indices: list[int]) -> Callable[[torch.Tensor, int], None]:
    """``on_counts`` that logs the chapter-usage histogram PNG of each evaluation to MLflow."""

    def on_counts(counts: torch.Tensor, step: int) -> None:
        from router_pipelines.hooks import is_main_process
        from router_pipelines.tracking import log_figure

        if not is_main_process():
            return
        figure = chapter_usage_figure(counts.numpy(), layer_indices, f"chapter usage, step {step}")
        log_figure(figure, f"chapter_usage/step_{step:06d}.png")

    return on_counts
