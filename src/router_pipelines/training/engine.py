"""The one training engine: an explicit Accelerate loop shared by every model family.

A family brings a model and a :data:`~router_pipelines.training.losses.LossFn`; the
engine knows nothing of quantization or routing. One optimizer step is
``gradient_accumulation_steps`` micro-batches (``accelerator.accumulate``), then
clipping (``accelerator.clip_grad_norm_``), the lr (schedule x ``lr_multiplier_fn``),
``optimizer.step`` and ``scheduler.step``. After the step, in this order: evaluation
(every ``eval_steps``: best model, early stopping), the train log (every
``logging_steps`` and at the last step), a checkpoint (every ``save_steps``).

Logged metric names (``TrainResult.history``, ``log_fn``), with step = optimizer steps
completed: ``train_loss`` (mean of micro-batch losses since the last log),
``train_<m>`` for each family metric ``m``, ``lr`` (the base ``learning_rate`` group's
lr used by the last step), ``grad_norm`` (before clipping; absent when
``max_grad_norm`` is null), ``tokens_per_s`` (input tokens over all processes per
second of step compute), ``epoch``, ``eval_loss`` and ``eval_<m>``.

Evaluation mean: weighted by the ``"tokens"`` metric when the eval loss function
returns one (``causal_lm_loss`` does: the mean is then over predicted tokens), else
every batch counts once. Under several processes Accelerate pads the last eval batch
with repeated examples (``even_batches``), a negligible bias.

Exact resume: the data order is a pure function of ``(seed, epoch)``
(:mod:`~router_pipelines.training.dataloaders`); a checkpoint stores the data position
(epoch, micro-batches consumed in it), the RNG states of every process, model,
optimizer and scheduler; resuming skips the consumed batches with
``accelerator.skip_first_batches``. Evaluation runs under ``torch.random.fork_rng`` so
it never shifts the dropout stream. On CPU a resumed run ends bit-identical to an
uninterrupted one.

Several processes, FSDP, DeepSpeed: launch the same code with ``accelerate launch``.
``--num_processes N`` gives DDP (each process reads ``batch_size`` examples, so the
global batch is ``N * batch_size * gradient_accumulation_steps``). FSDP or DeepSpeed
come from an Accelerate config file (``accelerate config`` writes one; pass it with
``accelerate launch --config_file fsdp.yaml``, e.g. ``distributed_type: FSDP`` with
``fsdp_config: {fsdp_version: 2, fsdp_auto_wrap_policy: TRANSFORMER_BASED_WRAP,
fsdp_state_dict_type: SHARDED_STATE_DICT}``, or ``distributed_type: DEEPSPEED`` with
``deepspeed_config: {zero_stage: 2}``). The engine only uses ``accelerator.prepare``,
``backward``, ``clip_grad_norm_``, ``save_state``/``load_state``, ``unwrap_model`` and
``get_state_dict``, so those plugins work unchanged; ``mixed_precision`` from this
config overrides the launcher's. Only the main process writes files other than
Accelerate's per-process state, and every process meets at ``wait_for_everyone``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed
from torch import nn
from torch.utils.data import Dataset, Subset
from tqdm.auto import tqdm

from router_pipelines.training import checkpoint as ckpt
from router_pipelines.training.config import TrainingConfig
from router_pipelines.training.dataloaders import (
    build_eval_dataloader,
    build_train_dataloader,
    check_map_dataset,
    count_tokens,
)
from router_pipelines.training.losses import LossFn
from router_pipelines.training.metrics import LogWindow, evaluate, reduce_sums
from router_pipelines.training.optim import build_optimizer, build_scheduler
from router_pipelines.training.runtime import (
    build_accelerator,
    claim_gradient_state,
    enable_gradient_checkpointing,
)

logger = logging.getLogger(__name__)

LogFn = Callable[[dict[str, float], int], None]


class NonFiniteLossError(RuntimeError):
    """A training loss was NaN or infinite; the message names the optimizer step."""


@dataclass
class TrainResult:
    """What :meth:`Trainer.train` returns."""

    global_step: int  # optimizer steps completed
    epochs_completed: float  # passes over the training set (fractional)
    tokens_seen: int  # input tokens over all processes
    train_loss: float  # last logged train_loss (nan if none)
    best_eval_loss: float | None
    best_step: int | None
    stopped_early: bool
    history: dict[str, list[tuple[int, float]]]  # metric -> [(step, value)]
    best_model_dir: str | None
    last_checkpoint: str | None
    seconds: float  # wall time of this train() call
    model: nn.Module = field(repr=False)  # unwrapped; best weights if load_best_model_at_end


class Trainer:
    """Trains ``model`` with ``loss_fn`` on ``train_dataset`` as ``config`` says.

    Args:
        model: any ``nn.Module``; HF models get ``save_pretrained`` for ``best/``.
        loss_fn: ``loss_fn(model, batch, step) -> (loss, metrics)``, see ``LossFn``.
        train_dataset: map-style dataset of dicts of 1-D LongTensors (length T).
        eval_dataset: same format; evaluated every ``eval_steps``.
        config: the :class:`TrainingConfig`.
        eval_loss_fn: loss for evaluation (default ``loss_fn``), called under
            ``torch.no_grad`` with ``model.eval()``.
        log_fn: ``log_fn(metrics, step)``, called on the main process for every log.
        lr_multiplier_fn: ``f(step) -> float`` multiplying every group's scheduled lr
            at optimizer step ``step`` (0-based).

    The ``Accelerator`` is built here and exposed as ``self.accelerator`` (a family can
    put a teacher on ``accelerator.device``); model, optimizer, scheduler and loaders
    are prepared here too, so bad inputs fail before ``train()``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_dataset: Dataset,
        eval_dataset: Dataset | None = None,
        config: TrainingConfig | None = None,
        eval_loss_fn: LossFn | None = None,
        log_fn: LogFn | None = None,
        lr_multiplier_fn: Callable[[int], float] | None = None,
    ) -> None:
        if not isinstance(config, TrainingConfig):
            raise ValueError(f"config: expected a TrainingConfig, got {type(config).__name__}")
        if not isinstance(model, nn.Module):
            raise ValueError(f"model: expected an nn.Module, got {type(model).__name__}")
        if eval_dataset is None and config.early_stopping:
            raise ValueError("early_stopping: true needs an eval_dataset")
        self.config = config
        self.loss_fn = loss_fn
        self.eval_loss_fn = eval_loss_fn or loss_fn
        self.log_fn = log_fn
        self.lr_multiplier_fn = lr_multiplier_fn
        self.accelerator = build_accelerator(config)
        self._resume_from = ckpt.resolve_resume_checkpoint(config)
        num_processes = self.accelerator.num_processes
        global_batch_size = config.batch_size * num_processes
        num_examples = check_map_dataset("train_dataset", train_dataset)
        if num_examples < global_batch_size:
            raise ValueError(
                f"train_dataset: {num_examples} examples is less than one global batch "
                f"(batch_size {config.batch_size} x {num_processes} processes)"
            )
        if config.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        train_loader, self._sampler = build_train_dataloader(
            train_dataset, config.batch_size, config.seed, config.num_workers
        )
        optimizer = build_optimizer(model, config)
        scheduler = build_scheduler(optimizer, config)
        to_prepare = [model, optimizer, train_loader, scheduler]
        if eval_dataset is not None:
            eval_batch_size = config.eval_batch_size or config.batch_size
            if config.eval_max_batches is not None:
                limit = config.eval_max_batches * eval_batch_size * num_processes
                eval_dataset = Subset(eval_dataset, range(min(limit, len(eval_dataset))))
            to_prepare.append(
                build_eval_dataloader(
                    eval_dataset, eval_batch_size, config.seed, config.num_workers
                )
            )
        prepared = self.accelerator.prepare(*to_prepare)
        self.model, self.optimizer, self.train_loader, self.scheduler = prepared[:4]
        self.eval_loader = prepared[4] if eval_dataset is not None else None
        self.state = ckpt.TrainerState(global_batch_size=global_batch_size)
        self._default_group = next(
            (i for i, g in enumerate(self.optimizer.param_groups) if g["group_name"] == "default"),
            0,
        )
        self._last_saved_step: int | None = None
        self._last_lr = float("nan")
        self._trained = False

    def train(self) -> TrainResult:
        """Run until ``max_steps`` optimizer steps or early stopping.

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
        batches = self._micro_batches()
        self.model.train()
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
        return self._result(time.perf_counter() - started)

    def _micro_batches(self) -> Iterator[dict[str, torch.Tensor]]:
        """Training micro-batches from the saved data position on, epoch after epoch."""
        state, batches_per_epoch = self.state, len(self.train_loader)
        while True:
            self._sampler.set_epoch(state.epoch)
            self.train_loader.set_epoch(state.epoch)
            loader = self.train_loader
            if state.batch_in_epoch:
                loader = self.accelerator.skip_first_batches(loader, state.batch_in_epoch)
            for batch in loader:
                state.batch_in_epoch += 1
                if state.batch_in_epoch == batches_per_epoch:
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                yield batch

    def _optimizer_step(
        self, batches: Iterator[dict[str, torch.Tensor]], window: LogWindow
    ) -> None:
        """Accumulate ``gradient_accumulation_steps`` micro-batches, then step."""
        acc, step = self.accelerator, self.state.global_step
        window.start_step()
        nonfinite = torch.zeros((), device=acc.device)
        tokens, global_tokens, grad_norm = 0, 0.0, None
        for _ in range(self.config.gradient_accumulation_steps):
            batch = next(batches)
            tokens += count_tokens(batch)
            with acc.accumulate(self.model):
                with acc.autocast():
                    loss, metrics = self.loss_fn(self.model, batch, step)
                if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                    raise ValueError(f"loss_fn: must return a scalar tensor, got {loss!r}")
                nonfinite += (~torch.isfinite(loss.detach())).float()
                window.add_micro_batch(loss.detach(), metrics)
                acc.backward(loss)
                if acc.sync_gradients:
                    bad, global_tokens = reduce_sums(acc, [float(nonfinite), float(tokens)])
                    if bad:
                        raise NonFiniteLossError(
                            f"non-finite training loss at step {step} (0-based optimizer step; "
                            f"{int(bad)} micro-batch(es) over all processes); no update was applied"
                        )
                    if self.config.max_grad_norm is not None:
                        norm = acc.clip_grad_norm_(
                            self.model.parameters(), self.config.max_grad_norm
                        )
                        grad_norm = None if norm is None else float(norm)  # None: DeepSpeed
                    self._apply_lr(step)
                    self.optimizer.step()
                    if not self.optimizer.step_was_skipped:  # fp16 overflow: keep the schedule
                        self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
        self.state.global_step += 1
        self.state.tokens_seen += int(global_tokens)
        window.end_step(int(global_tokens), grad_norm)

    def _apply_lr(self, step: int) -> None:
        """Set every group's lr to its scheduled value times ``lr_multiplier_fn(step)``."""
        multiplier = 1.0 if self.lr_multiplier_fn is None else float(self.lr_multiplier_fn(step))
        if not math.isfinite(multiplier) or multiplier < 0:
            raise ValueError(f"lr_multiplier_fn: returned {multiplier!r} at step {step}; need >= 0")
        for group, lr in zip(
            self.optimizer.param_groups, self.scheduler.get_last_lr(), strict=True
        ):
            group["lr"] = float(lr) * multiplier
        # scheduler.step() overwrites group["lr"] with the next step's value; log this one.
        self._last_lr = self.optimizer.param_groups[self._default_group]["lr"]

    def _after_step(self, window: LogWindow, bar: tqdm) -> bool:
        """Evaluate, log and checkpoint as due; return whether training is over."""
        config, state = self.config, self.state
        step = state.global_step
        if self.eval_loader is not None and config.eval_steps and step % config.eval_steps == 0:
            eval_metrics = evaluate(
                self.accelerator, self.model, self.eval_loader, self.eval_loss_fn, step
            )
            self._log(eval_metrics, step)
            self._update_best(eval_metrics["eval_loss"])
        done = step >= config.max_steps or state.stopped_early
        if step % config.logging_steps == 0 or done:
            record = window.summary(self.accelerator)
            record["lr"] = self._last_lr
            record["epoch"] = state.epoch + state.batch_in_epoch / len(self.train_loader)
            window.reset()
            self._log(record, step)
            bar.set_postfix(
                loss=f"{record['train_loss']:.4f}",
                lr=f"{record['lr']:.2e}",
                tok_s=f"{record.get('tokens_per_s', 0.0):.0f}",
            )
        if config.save_steps and step % config.save_steps == 0:
            self._save()
        return done

    def _update_best(self, eval_loss: float) -> None:
        """Track the best eval loss (any decrease) and the early-stopping patience."""
        config, state = self.config, self.state
        best = state.best_eval_loss
        improved_enough = best is None or best - eval_loss > config.early_stopping_threshold
        if best is None or eval_loss < best:
            state.best_eval_loss, state.best_step = eval_loss, state.global_step
            if config.save_best_model:
                info = {"step": state.global_step, "eval_loss": eval_loss}
                ckpt.save_best_model(self.accelerator, self.model, config.output_dir, info)
        state.patience_counter = 0 if improved_enough else state.patience_counter + 1
        if config.early_stopping and state.patience_counter >= config.early_stopping_patience:
            state.stopped_early = True
            if self.accelerator.is_main_process:
                logger.info(
                    "early stopping at step %d: no eval-loss improvement > %g in %d evaluations",
                    state.global_step,
                    config.early_stopping_threshold,
                    state.patience_counter,
                )

    def _log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.state.history.setdefault(key, []).append((step, float(value)))
        if self.log_fn is not None and self.accelerator.is_main_process:
            self.log_fn(dict(metrics), step)

    def _save(self) -> None:
        path = ckpt.save_checkpoint(self.accelerator, self.config, self.state)
        if self.accelerator.is_main_process:
            ckpt.rotate_checkpoints(
                self.config.output_dir, self.config.save_total_limit, self.state.best_step
            )
            logger.info("saved %s", path)
        self.accelerator.wait_for_everyone()
        self._last_saved_step = self.state.global_step

    def _load_checkpoint(self, path: Path) -> None:
        """Restore model, optimizer, scheduler, RNG states and the trainer counters."""
        self.accelerator.load_state(str(path))
        self.accelerator.step = 0  # micro-batch counter: checkpoints sit on step boundaries
        loaded = ckpt.load_trainer_state(path)
        global_batch_size = self.state.global_batch_size
        if loaded.global_batch_size != global_batch_size:
            # Another process count or batch size: keep the number of examples consumed.
            examples = loaded.batch_in_epoch * loaded.global_batch_size
            loaded.batch_in_epoch = examples // global_batch_size
            logger.warning(
                "resume: global batch %d -> %d; data position mapped to %d batches (%s)",
                loaded.global_batch_size,
                global_batch_size,
                loaded.batch_in_epoch,
                "exact" if examples % global_batch_size == 0 else "rounded down",
            )
            loaded.global_batch_size = global_batch_size
        if loaded.batch_in_epoch >= len(self.train_loader):
            loaded.epoch, loaded.batch_in_epoch = loaded.epoch + 1, 0
        self.state = loaded
        self._last_saved_step = loaded.global_step
        if self.accelerator.is_main_process:
            logger.info("resumed from %s at step %d", path, loaded.global_step)

    def _result(self, seconds: float) -> TrainResult:
        config, state, acc = self.config, self.state, self.accelerator
        best_dir = Path(config.output_dir) / ckpt.BEST_DIR_NAME
        has_best = state.best_step is not None and best_dir.is_dir()
        model = acc.unwrap_model(self.model)
        if config.load_best_model_at_end and has_best:
            acc.wait_for_everyone()
            ckpt.load_model_weights(model, best_dir)
        latest = ckpt.find_latest_checkpoint(config.output_dir)
        losses = state.history.get("train_loss", [])
        return TrainResult(
            global_step=state.global_step,
            epochs_completed=state.epoch + state.batch_in_epoch / len(self.train_loader),
            tokens_seen=state.tokens_seen,
            train_loss=losses[-1][1] if losses else float("nan"),
            best_eval_loss=state.best_eval_loss,
            best_step=state.best_step,
            stopped_early=state.stopped_early,
            history={k: list(v) for k, v in state.history.items()},
            best_model_dir=str(best_dir) if has_best else None,
            last_checkpoint=str(latest) if latest is not None else None,
            seconds=seconds,
            model=model,
        )
