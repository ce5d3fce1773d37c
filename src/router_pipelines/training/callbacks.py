"""Step callbacks: a small version of HF ``TrainerCallback`` / Lightning callbacks.

Subclass :class:`TrainerCallback` and override the hooks you need. Hooks run on every process
with the same inputs (logged metrics are already reduced over processes), in the order the
callbacks were given. A hook that returns ``True`` stops training once the current step's
evaluation, log and checkpoint are done; under several processes the decision is combined
(any process asking stops all). Side effects such as writing files are the callback's own
business: check ``accelerator.is_main_process`` there.

Order within one optimizer step: when an evaluation ran, ``on_log`` with its metrics, then
``on_evaluate``; ``on_log`` with the train metrics when they are due; ``on_save`` while the step's checkpoint
is written; ``on_step_end`` with everything logged at this step (after the step's checkpoint).
``on_train_end`` runs once, after the final checkpoint (whose ``on_save`` comes first).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from router_pipelines.training.state import TrainerState


class TrainerCallback:
    """Hooks into the training loop; every hook is optional."""

    def on_step_end(self, state: TrainerState, logs: dict[str, float]) -> bool | None:
        """After optimizer step ``state.global_step``; ``logs``: all metrics logged at it."""
        return None

    def on_log(self, state: TrainerState, logs: dict[str, float]) -> bool | None:
        """For each log (train metrics, or eval metrics), as ``log_fn`` gets it."""
        return None

    def on_evaluate(self, state: TrainerState, metrics: dict[str, float]) -> bool | None:
        """After an evaluation, once the best metric and early stopping are updated."""
        return None

    def on_save(
        self, state: TrainerState, checkpoint: Path, accelerator: Accelerator, model: Any
    ) -> None:
        """While checkpoint ``state.global_step`` is written: add files to ``checkpoint``, its
        folder (still temporary: complete but for ``trainer_state.json``, written after every
        callback's files, so the files are in the checkpoint or there is no checkpoint).
        ``model`` is the prepared model. Called on every process (gathering a state dict is a
        collective call under FSDP): write on ``accelerator.is_main_process`` only."""

    def on_train_end(self, state: TrainerState) -> None:
        """At the end of ``train()`` (not after an exception)."""


class CallbackList:
    """Calls every callback's hook; a stop request from any of them is kept."""

    def __init__(self, callbacks: Sequence[TrainerCallback] | None) -> None:
        self.callbacks = list(callbacks or [])
        for index, callback in enumerate(self.callbacks):
            if not isinstance(callback, TrainerCallback):
                raise ValueError(
                    f"callbacks: callbacks[{index}] must be a TrainerCallback, got "
                    f"{type(callback).__name__}"
                )
        self.stop_requested = False

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def step_end(self, state: TrainerState, logs: dict[str, float]) -> None:
        self._collect([cb.on_step_end(state, logs) for cb in self.callbacks])

    def log(self, state: TrainerState, logs: dict[str, float]) -> None:
        self._collect([cb.on_log(state, logs) for cb in self.callbacks])

    def evaluate(self, state: TrainerState, metrics: dict[str, float]) -> None:
        self._collect([cb.on_evaluate(state, metrics) for cb in self.callbacks])

    def save(
        self, state: TrainerState, checkpoint: Path, accelerator: Accelerator, model: Any
    ) -> None:
        for callback in self.callbacks:
            callback.on_save(state, checkpoint, accelerator, model)

    def train_end(self, state: TrainerState) -> None:
        for callback in self.callbacks:
            callback.on_train_end(state)

    def should_stop(self, accelerator: Accelerator) -> bool:
        """Whether a callback asked to stop, on any process (a collective with several)."""
        if not self.callbacks:
            return False
        if accelerator.num_processes == 1:
            return self.stop_requested
        flag = torch.tensor(float(self.stop_requested), device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum") > 0)

    def _collect(self, answers: list[bool | None]) -> None:
        if any(answer is True for answer in answers):
            self.stop_requested = True
