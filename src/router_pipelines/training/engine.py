"""The one training engine: an explicit Accelerate loop shared by every model family.

A family brings a model and a :data:`~router_pipelines.training.losses.LossFn`; the
engine knows nothing of quantization or routing. One optimizer step is
``gradient_accumulation_steps`` micro-batches (``accelerator.accumulate``), then
clipping (``accelerator.clip_grad_norm_``), the lr (schedule x ``lr_multiplier_fn``),
``optimizer.step`` and ``scheduler.step``. After the step, in this order: evaluation
(every ``eval_steps``: best model, early stopping), the train log (every
``logging_steps`` and at the last step), a checkpoint (every ``save_steps``), then the
callbacks' ``on_step_end``.

Logged metric names (``TrainResult.history``, ``log_fn``), with step = optimizer steps
completed: ``train_loss`` (mean of micro-batch losses since the last log),
``train_<m>`` for each family metric ``m``, ``lr`` (the base ``learning_rate`` group's
lr used by the last step), ``grad_norm`` (before clipping; absent when
``max_grad_norm`` is null), ``tokens_per_s`` (input tokens over all processes per
second of step compute), ``epoch``, and the eval metrics of :mod:`~.eval_loop`
(``eval_loss``, ``eval_<m>``, or ``eval_<name>_loss`` ... for named eval sets).

Host syncs: metrics stay on the device until a log; one sync per optimizer step checks the
loss for NaN/inf (over micro-batches and processes) before the update is applied.

Exact resume: the data order is a pure function of ``(seed, epoch)``
(:mod:`~router_pipelines.training.dataloaders`); a checkpoint stores the data position
(epoch, micro-batches consumed in it), the RNG states of every process, model,
optimizer and scheduler; resuming skips the consumed batches with
``accelerator.skip_first_batches``. Evaluation runs under ``torch.random.fork_rng`` so
it never shifts the dropout stream. On CPU a resumed run ends bit-identical to an
uninterrupted one. Run folders and what resume refuses: :mod:`~.runs`.

Several processes, FSDP, DeepSpeed: launch the same code with ``accelerate launch``
(docs/training.md); only the main process writes files other than Accelerate's
per-process state, and every process meets at ``wait_for_everyone``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from router_pipelines.storage import remove_stale_temporaries
from router_pipelines.training import checkpoint as ckpt
from router_pipelines.training.best import BestMetric
from router_pipelines.training.callbacks import CallbackList, TrainerCallback
from router_pipelines.training.config import TrainingConfig, check_output_dir
from router_pipelines.training.dataloaders import (
    build_train_dataloader,
    check_map_dataset,
    count_tokens,
    micro_batches,
)
from router_pipelines.training.eval_loop import (
    EvalCallback,
    build_eval_loaders,
    checked_eval_callbacks,
    named_eval_sets,
    run_evaluation,
)
from router_pipelines.training.losses import LossFn
from router_pipelines.training.metrics import LogWindow, check_metrics, reduce_sums
from router_pipelines.training.optim import apply_lr, build_optimizer, build_scheduler
from router_pipelines.training.result import TrainResult, build_result
from router_pipelines.training.runs import (
    check_resume_settings,
    plan_run,
    run_settings,
    shared_run_name,
)
from router_pipelines.training.runtime import (
    build_accelerator,
    claim_gradient_state,
    compile_model,
    compile_settings,
    describe_precision,
    enable_gradient_checkpointing,
    precision_plan,
    set_train_mode,
)
from router_pipelines.training.state import TrainerState
from router_pipelines.training.weights import register_weight_hooks

logger = logging.getLogger(__name__)

LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; the message names the optimizer step."""


class Trainer:
    """Trains ``model`` with ``loss_fn`` on ``train_dataset`` as ``config`` says.

    Args:
        model: any ``nn.Module``; HF and peft models get ``save_pretrained`` for ``best/``.
            Parameters with ``requires_grad=False`` stay out of the optimizer.
        loss_fn: ``loss_fn(model, batch, step) -> (loss, metrics)``, see ``LossFn``.
        train_dataset: map-style dataset of dicts of 1-D LongTensors (length T).
        eval_dataset: same format, or a mapping ``{name: dataset}`` of named eval sets;
            evaluated every ``eval_steps``.
        config: the :class:`TrainingConfig`.
        eval_loss_fn: loss for evaluation (default ``loss_fn``), called under
            ``torch.no_grad`` with ``model.eval()``.
        log_fn: ``log_fn(metrics, step)``, called on the main process for every log.
        lr_multiplier_fn: ``f(step) -> float`` multiplying every group's scheduled lr
            at optimizer step ``step`` (0-based).
        callbacks: :class:`~.callbacks.TrainerCallback` instances (run on every process).
        eval_callbacks: dataset-level evaluations, see :data:`~.eval_loop.EvalCallback`.
        run_config: the caller's settings that change the result (model config, data
            fingerprint, family settings), JSON-able; stored in every checkpoint and
            compared on resume like the result-affecting ``TrainingConfig`` fields.

    The ``Accelerator`` is built here and exposed as ``self.accelerator`` (a family can
    put a teacher on ``accelerator.device``); the run folder is ``self.run_dir``. Model,
    optimizer, scheduler and loaders are prepared here too, so bad inputs (and a resume
    checkpoint with other settings) fail before ``train()``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_dataset: Dataset,
        eval_dataset: Dataset | Mapping[str, Dataset] | None = None,
        config: TrainingConfig | None = None,
        eval_loss_fn: LossFn | None = None,
        log_fn: LogFn | None = None,
        lr_multiplier_fn: Callable[[int], float] | None = None,
        *,
        callbacks: Sequence[TrainerCallback] | None = None,
        eval_callbacks: Sequence[EvalCallback] | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(config, TrainingConfig):
            raise ValueError(f"config: expected a TrainingConfig, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
        check_output_dir(config.output_dir)  # it may have become a file since the config was built
        eval_sets = named_eval_sets(eval_dataset)
        self.eval_callbacks = checked_eval_callbacks(eval_callbacks)
        self._evaluates = bool(eval_sets or self.eval_callbacks)
        if not self._evaluates and config.early_stopping:
            raise ValueError("early_stopping: true needs an eval_dataset (or eval_callbacks)")
        if run_config is not None and not isinstance(run_config, Mapping):
            raise ValueError(f"run_config: expected a mapping, got {type(run_config).__name__}")
        self.config = config
        self.loss_fn = loss_fn
        self.eval_loss_fn = eval_loss_fn or loss_fn
        self.log_fn = log_fn
        self.lr_multiplier_fn = lr_multiplier_fn
        self.callbacks = CallbackList(callbacks)
        self.best = BestMetric(config)
        if self._evaluates:
            self.best.check_producible(list(eval_sets), bool(self.eval_callbacks))
        self.accelerator = acc = build_accelerator(config)
        if precision_plan(config, acc.device.type).note and acc.is_main_process:
            logger.warning(describe_precision(config, acc.device.type))
        plan = plan_run(config)
        self._run_settings = run_settings(config, run_config, acc.device.type)
        if plan.resume_from is not None:
            check_resume_settings(plan.resume_from, config, self._run_settings)
        self._resume_from = plan.resume_from
        self.run_dir = plan.run_dir or Path(config.output_dir) / shared_run_name(acc)
        global_batch_size = config.batch_size * acc.num_processes
        num_examples = check_map_dataset("train_dataset", train_dataset)
        if num_examples < global_batch_size:
            raise ValueError(
                f"train_dataset: {num_examples} examples is less than one global batch "
                f"(batch_size {config.batch_size} x {acc.num_processes} processes)"
            )
        register_weight_hooks(acc, config.save_only_trainable)
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.compile_settings = compile_settings(config)
        if self.compile_settings is not None:
            compile_model(model, self.compile_settings)
            logger.info(
                "torch.compile: backend %s, mode %s (%s); the first steps include compilation",
                self.compile_settings.backend,
                self.compile_settings.mode or "default",
                self.compile_settings.source,
            )
        train_loader, self._sampler = build_train_dataloader(
            train_dataset, config.batch_size, config.seed, config.num_workers
        )
        optimizer = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config)
        eval_loaders = build_eval_loaders(eval_sets, config, acc.num_processes)
        prepared = acc.prepare(model, optimizer, train_loader, scheduler, *eval_loaders)
        self.model, self.optimizer, self.train_loader, self.scheduler = prepared[:4]
        self.eval_loaders = dict(zip(eval_sets, prepared[4:], strict=True))
        self.state = TrainerState(global_batch_size=global_batch_size)
        self._default_group = next(
            (i for i, g in enumerate(self.optimizer.param_groups) if g["group_name"] == "default"),
            0,
        )
        self._last_saved_step: int | None = None
        self._last_lr = float("nan")
        self._stopped_by_callback = False
        self._trained = False

    def train(self) -> TrainResult:
        """Run until ``max_steps`` optimizer steps, early stopping or a callback's stop.

        Raises:
            NonFiniteLossError: a loss was NaN/inf; no optimizer step is taken for it and
                existing checkpoints are left as they are.
        """
        if self._trained:
            raise RuntimeError("Trainer.train() runs once; build a new Trainer to train again")
        self._trained = True
        started, config, acc = time.perf_counter(), self.config, self.accelerator
        claim_gradient_state(acc, config)
        set_seed(config.seed)
        if acc.is_main_process:
            for path in remove_stale_temporaries(self.run_dir):
                logger.info("removed %s, left by an interrupted save", path)
        acc.wait_for_everyone()
        if self._resume_from is not None:
            self._load_checkpoint(self._resume_from)
        state, start_step = self.state, self.state.global_step
        window = LogWindow(acc.device)
        bar = tqdm(
            total=config.max_steps,
            initial=state.global_step,
            desc="train",
            disable=not (config.progress_bar and acc.is_main_process),
            dynamic_ncols=True,
        )
        batches = micro_batches(self.accelerator, self.train_loader, self._sampler, state)
        set_train_mode(self.model, config.frozen_modules_eval)
        try:
            done = state.global_step >= config.max_steps or state.stopped_early
            while not done:
                self._optimizer_step(batches, window)
                bar.update(1)
                done = self._after_step(window, bar)
        finally:
            batches.close()
            bar.close()
        ran = state.global_step > start_step
        if config.save_at_end and ran and self._last_saved_step != state.global_step:
            self._save()
        result = build_result(
            acc,
            self.model,
            state,
            self.run_dir,
            best_metric_name=self.best.name,
            load_best=config.load_best_model_at_end,
            batches_per_epoch=len(self.train_loader),
            stopped_by_callback=self._stopped_by_callback,
            seconds=time.perf_counter() - started,
        )
        self.callbacks.train_end(state)
        return result

    def _optimizer_step(
        self, batches: Iterator[dict[str, torch.Tensor]], window: LogWindow
    ) -> None:
        """Accumulate ``gradient_accumulation_steps`` micro-batches, then step."""
        acc, step = self.accelerator, self.state.global_step
        window.start_step()
        nonfinite = torch.zeros((), device=acc.device)
        tokens = torch.zeros((), dtype=torch.int64, device=acc.device)
        global_tokens, grad_norm = 0.0, None
        for _ in range(self.config.gradient_accumulation_steps):
            batch = next(batches)
            tokens += count_tokens(batch)
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, metrics = self.loss_fn(self.model, batch, step)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    raise ValueError(f"loss_fn: must return a scalar tensor, got {loss!r}")
                check_metrics("loss_fn", metrics)
                nonfinite += (~torch.isfinite(loss.detach())).float()
                window.add_micro_batch(loss.detach(), metrics)
                acc.backward(loss)
                if acc.sync_gradients:
                    # The one host sync of a step: never apply an update from a NaN/inf loss.
                    bad, global_tokens = reduce_sums(acc, [nonfinite, tokens])
                    if bad:
                        raise NonFiniteLossError(
                            f"non-finite training loss at step {step} (0-based optimizer step; "
                            f"{int(bad)} micro-batch(es) over all processes); no update was applied"
                        )
                    if self.config.max_grad_norm is not None:
                        # None under DeepSpeed, which clips itself
                        grad_norm = acc.clip_grad_norm_(
                            self.model.parameters(), self.config.max_grad_norm
                        )
                    self._last_lr = apply_lr(
                        self.optimizer, self.scheduler, self.lr_multiplier_fn, step
                    )[self._default_group]
                    self.optimizer.step()
                    if not self.optimizer.step_was_skipped:  # fp16 overflow: keep the schedule
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.tokens_seen += int(global_tokens)
        window.end_step(int(global_tokens), grad_norm)

    def _after_step(self, window: LogWindow, bar: tqdm) -> bool:
        """Evaluate, log, checkpoint and call back as due; return whether training is over."""
        config, state = self.config, self.state
        step, logs = state.global_step, {}
        if self._evaluates and config.eval_steps and step % config.eval_steps == 0:
            metrics = run_evaluation(
                self.accelerator,
                self.model,
                self.eval_loaders,
                self.eval_loss_fn,
                self.eval_callbacks,
                step,
            )
            self.best.record(self.accelerator, self.model, self.run_dir, self.state, metrics)
            self._log(metrics, step, logs)
            self.callbacks.evaluate(state, metrics)
        done = step >= config.max_steps or state.stopped_early
        if step % config.logging_steps == 0 or done:
            self._log_train(window, bar, logs)
        if config.save_steps and step % config.save_steps == 0:
            self._save()
        self.callbacks.step_end(state, logs)
        if not done and self.callbacks.should_stop(self.accelerator):
            done = self._stopped_by_callback = True
            if self.accelerator.is_main_process:
                logger.info("a callback stopped training at step %d", step)
            if window.pending:
                self._log_train(window, bar, logs)
        return done

    def _log_train(self, window: LogWindow, bar: tqdm, logs: dict[str, float]) -> None:
        state = self.state
        record = window.summary(self.accelerator)
        record["lr"] = self._last_lr
        record["epoch"] = state.epoch + state.batch_in_epoch / len(self.train_loader)
        window.reset()
        self._log(record, state.global_step, logs)
        extra = {
            label: f"{record[key]:.4g}"
            for key, label in self.config.progress_metrics.items()
            if key in record
        }
        bar.set_postfix(
            loss=f"{record['train_loss']:.4f}",
            lr=f"{record['lr']:.2e}",
            tok_s=f"{record.get('tokens_per_s', 0.0):.0f}",
            **extra,
        )

    def _log(self, metrics: dict[str, float], step: int, logs: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.state.history.setdefault(key, []).append((step, float(value)))
        logs.update(metrics)
        if self.log_fn is not None and self.accelerator.is_main_process:
            self.log_fn(dict(metrics), step)
        self.callbacks.log(self.state, dict(metrics))

    def _save(self) -> None:
        acc = self.accelerator
        path = ckpt.save_checkpoint(
            acc,
            self.run_dir,
            self.config,
            self.state,
            self._run_settings,
            add_files=self._add_checkpoint_files if self.callbacks else None,
        )
        if acc.is_main_process:
            ckpt.rotate_checkpoints(
                self.run_dir, self.config.save_total_limit, self.state.best_step
            )
            logger.info("saved %s", path)
        acc.wait_for_everyone()
        self._last_saved_step = self.state.global_step

    def _add_checkpoint_files(self, folder: Path) -> None:
        self.callbacks.save(self.state, folder, self.accelerator, self.model)

    def _load_checkpoint(self, path: Path) -> None:
        """Restore model, optimizer, scheduler, RNG states and the trainer counters."""
        self.accelerator.load_state(str(path))
        self.accelerator.step = 0  # micro-batch counter: checkpoints sit on step boundaries
        self.state = ckpt.load_trainer_state(path).moved_to(
            self.state.global_batch_size, len(self.train_loader)
        )
        self._last_saved_step = self.state.global_step
        if self.accelerator.is_main_process:
            logger.info("resumed from %s at step %d", path, self.state.global_step)
