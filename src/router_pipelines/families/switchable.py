"""The switchable-precision family: which width trains at each step, and its loss.

It plugs into the shared engine through the :data:`~router_pipelines.training.losses.LossFn`
contract (``loss_fn(model, batch, step) -> (loss, metrics)``) and an optional
``lr_multiplier_fn(step) -> float``. ``model`` is a
:class:`~router_pipelines.models.switchable.SwitchableLM`, possibly wrapped by Accelerate
(DDP ``.module``) or ``torch.compile`` (``._orig_mod``): precision is set on the wrapped
model, the forward goes through the wrapper.

Under DDP, only the quantizers of the widths trained in a step get gradients, so the engine
must build DDP with ``find_unused_parameters=True``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from router_pipelines.config import check_choice, check_positive
from router_pipelines.models.quantization import check_precision
from router_pipelines.training.losses import IGNORE_INDEX, LossFn, causal_lm_loss

STRATEGIES = ("cyclic", "random", "scheduled", "progressive", "joint")
FP_BITS_METRIC = 32.0  # what the "bits" metric reports for a full-precision step


@dataclass
class SwitchingConfig:
    """Which bit width(s) the student trains at each optimizer step.

    Widths are ints 2..8 or ``None`` / ``"fp"`` (full precision). ``step`` is the 0-based
    optimizer step; ``i = step // switch_interval`` is the interval index.

    * ``cyclic``: ``bit_widths[i % n]``, in the given order.
      ``[2, 4, 8]``, interval 2 -> 2, 2, 4, 4, 8, 8, 2, ...
    * ``random``: ``bit_widths[k]``, ``k`` drawn from ``numpy.random.default_rng([seed, i])``:
      a function of ``(seed, i)`` only, so a resumed run sees the same widths.
    * ``scheduled``: ``bit_width_schedule[i % len(schedule)]``, e.g. ``[8, 4, 2, 4, 8]``.
    * ``progressive``: high to low; ``max_steps`` split into ``n`` equal stages, stage
      ``min(step * n // max_steps, n - 1)`` of the widths sorted high to low (FP highest).
      ``[2, 4, 8]``, max_steps 6 -> 8, 8, 4, 4, 2, 2 (and 2 after ``max_steps``).
    * ``joint``: every width at every step, sorted high to low (Any-Precision DNN).
    """

    strategy: str = "cyclic"  # one of STRATEGIES
    bit_widths: list[int | None] = field(default_factory=lambda: [2, 4, 8])  # trained widths
    switch_interval: int = 10  # steps a width is held (cyclic, random, scheduled)
    bit_width_schedule: list[int | None] | None = None  # the "scheduled" sequence
    seed: int = 0  # "random": widths are a function of (seed, step // switch_interval)
    max_steps: int | None = None  # "progressive": the run length split into stages

    def __post_init__(self) -> None:
        check_choice("strategy", self.strategy, STRATEGIES)
        self.bit_widths = _check_widths("bit_widths", self.bit_widths)
        if len(set(self.bit_widths)) != len(self.bit_widths):
            raise ValueError(f"bit_widths: {self.bit_widths} repeats a width; list each once")
        _check_int("switch_interval", self.switch_interval, minimum=1)
        _check_int("seed", self.seed, minimum=0)
        if self.max_steps is not None or self.strategy == "progressive":
            _check_int("max_steps", self.max_steps, minimum=1, needed_by=self.strategy)
        if self.bit_width_schedule is not None or self.strategy == "scheduled":
            schedule = _check_widths("bit_width_schedule", self.bit_width_schedule)
            outside = [b for b in schedule if b not in self.bit_widths]
            if outside:
                raise ValueError(
                    f"bit_width_schedule: width(s) {outside} are not in bit_widths "
                    f"{self.bit_widths}"
                )
            self.bit_width_schedule = schedule


@dataclass
class DistillConfig:
    """Weights of the loss terms (see :func:`make_switchable_loss`)."""

    ce_weight: float = 1.0  # cross-entropy with the labels
    kd_weight: float = 1.0  # KL from the full-precision teacher (ignored without a teacher)
    temperature: float = 1.0  # softmax temperature of both distillation terms
    inter_width_kd_weight: float = 1.0  # joint: KL from the next-higher width's logits

    def __post_init__(self) -> None:
        for name in ("ce_weight", "kd_weight", "inter_width_kd_weight"):
            check_positive(name, getattr(self, name), allow_zero=True)
        check_positive("temperature", self.temperature)


def bit_widths_for_step(step: int, config: SwitchingConfig) -> list[int | None]:
    """The width(s) trained at 0-based optimizer ``step`` (sequences: :class:`SwitchingConfig`).

    Returns:
        One width, or every width high to low for ``joint``.
    """
    widths = config.bit_widths
    interval = step // config.switch_interval
    if config.strategy == "cyclic":
        return [widths[interval % len(widths)]]
    if config.strategy == "random":
        index = int(np.random.default_rng([config.seed, interval]).integers(len(widths)))
        return [widths[index]]
    if config.strategy == "scheduled":
        schedule = config.bit_width_schedule
        return [schedule[interval % len(schedule)]]
    high_to_low = sorted(widths, key=_precision_rank, reverse=True)
    if config.strategy == "progressive":
        stage = min(step * len(widths) // config.max_steps, len(widths) - 1)
        return [high_to_low[stage]]
    return high_to_low


def width_step_counts(config: SwitchingConfig, max_steps: int) -> dict[int | None, int]:
    """How many of the steps ``0..max_steps-1`` train each width (joint: all of them)."""
    _check_int("max_steps", max_steps, minimum=1)
    counts = {width: 0 for width in config.bit_widths}
    for step in range(max_steps):
        for width in bit_widths_for_step(step, config):
            counts[width] += 1
    return counts


def lr_multiplier_fn(
    switching: SwitchingConfig, multipliers: Mapping[Any, float]
) -> Callable[[int], float]:
    """Per-precision learning-rate multiplier: ``step -> multipliers[width of step]``.

    Widths missing from ``multipliers`` get 1.0. Under ``joint`` every step trains every
    width with one optimizer step, so the multiplier is always 1.0.

    Raises:
        ValueError: a key that is not one of ``switching.bit_widths``, or a value <= 0.
    """
    table: dict[int | None, float] = {}
    for key, value in multipliers.items():
        width = check_precision("lr_multipliers", key)
        if width not in switching.bit_widths:
            raise ValueError(
                f"lr_multipliers: width {key!r} is not in bit_widths {switching.bit_widths}"
            )
        check_positive(f"lr_multipliers.{key}", value)
        table[width] = float(value)

    def multiplier(step: int) -> float:
        if switching.strategy == "joint":
            return 1.0
        return table.get(bit_widths_for_step(step, switching)[0], 1.0)

    return multiplier


def distillation_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """``T^2 * mean KL(softmax(teacher/T) || softmax(student/T))`` over predicted tokens.

    Hinton's soft-target loss (equal, up to a constant, to cross-entropy with the soft
    targets). Positions are shifted the HF way: logits at ``t`` predict ``labels[t + 1]``;
    only those with ``labels[t + 1] != -100`` count.

    Args:
        student_logits, teacher_logits: ``(B, T, V)``; the teacher side is not differentiated.
        labels: ``(B, T)``.

    Returns:
        A float32 scalar (0 when no position counts).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"teacher logits {tuple(teacher_logits.shape)} do not match the student's "
            f"{tuple(student_logits.shape)} (same vocabulary needed)"
        )
    return _kl_to_targets(student_logits, soft_targets(teacher_logits, labels, temperature))


@dataclass
class SoftTargets:
    """A teacher's tempered log-probabilities at the predicted positions, computed once per
    batch and shared by every width that distils from it."""

    mask: torch.Tensor  # (B, T-1) bool: positions whose next label counts
    log_probs: torch.Tensor | None  # (N, V) log softmax(teacher / T); None when N == 0
    temperature: float


def soft_targets(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> SoftTargets:
    """The soft targets of ``logits`` ``(B, T, V)`` (not differentiated) for ``labels`` ``(B, T)``."""
    mask = labels[:, 1:] != IGNORE_INDEX  # (B, T-1)
    if not bool(mask.any()):
        return SoftTargets(mask, None, temperature)
    teacher = _positions(logits.detach(), mask).float() / temperature  # (N, V)
    return SoftTargets(mask, F.log_softmax(teacher, dim=-1), temperature)


def _kl_to_targets(student_logits: torch.Tensor, targets: SoftTargets) -> torch.Tensor:
    """``T^2 * mean KL(targets || softmax(student/T))`` over the targets' positions."""
    if targets.log_probs is None:
        return student_logits.new_zeros((), dtype=torch.float32)
    temperature = targets.temperature
    student = _positions(student_logits, targets.mask).float() / temperature  # (N, V)
    kl = F.kl_div(
        F.log_softmax(student, dim=-1), targets.log_probs, log_target=True, reduction="none"
    ).sum(-1)  # (N,)
    return kl.mean() * temperature**2


def _positions(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``logits[:, :-1]`` where ``mask`` holds, as ``(N, V)``; a plain reshape when every
    position counts (boolean indexing copies through a slower gather)."""
    shifted = logits[:, :-1]
    return shifted.reshape(-1, shifted.shape[-1]) if bool(mask.all()) else shifted[mask]


def make_switchable_loss(
    teacher: nn.Module | None, switching: SwitchingConfig, distill: DistillConfig
) -> LossFn:
    """The training loss of a switchable model, for the shared engine.

    A single-width step sets the student to its width (activation bits from the model's
    policy) and computes ``ce_weight * CE + kd_weight * KD`` with KD from the teacher
    (:func:`distillation_kl`; 0 without a teacher). A ``joint`` step runs every width on the
    same batch, high to low, and sums their losses (one backward of the sum = summed
    gradients); each lower width adds ``inter_width_kd_weight * KD`` from the next-higher
    width's detached logits (Any-Precision DNN's recursive distillation). All widths' graphs
    are alive until the backward: joint costs about ``len(bit_widths)`` times the memory.

    The teacher (e.g. the unquantized base model) is put in eval mode with gradients off,
    run under ``no_grad``, and moved to the batch's device on first use. The first call also
    initialises the step sizes of every trained width on its batch
    (``SwitchableLM.initialize_quantizers``).

    Metrics: ``loss``, ``ce``, ``kd``, ``bits`` (32 for FP), ``tokens``; joint reports the
    means over widths for ``ce``/``kd``/``bits``, plus ``kd_inter`` and ``ce_<b>bit``
    (``ce_fp``) per width.
    """
    if teacher is not None:
        teacher.eval()
        teacher.requires_grad_(False)
    prepared = []  # becomes [True] once the quantizers were initialised on the first batch

    def loss_fn(
        model: nn.Module, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        widths = bit_widths_for_step(step, switching)
        student = _switchable_of(model)
        if not prepared:
            # Every rank gets here at its first step, so each width's step sizes are set (and
            # averaged across ranks) now, never later inside a forward only some ranks run.
            student.initialize_quantizers(
                batch["input_ids"], batch["attention_mask"], switching.bit_widths
            )
            prepared.append(True)
        teacher_targets = None
        if teacher is not None and distill.kd_weight > 0:
            # once per step, shared by every width of a joint step
            teacher_targets = soft_targets(
                _teacher_logits(teacher, batch), batch["labels"], distill.temperature
            )
        tokens = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        if switching.strategy != "joint":
            student.set_precision(widths[0])
            output = _forward(model, batch)
            loss, parts = _width_loss(output, batch, teacher_targets, None, distill)
            metrics = {"ce": parts["ce"], "kd": parts["kd"], "bits": _bits_metric(widths[0])}
            return loss, {"loss": float(loss.detach()), **metrics, "tokens": tokens}
        # One forward call runs every width (DDP allows one forward per backward).
        outputs = _forward(model, batch, precisions=widths)
        total, higher_logits, per_width = 0.0, None, []
        for output in outputs:
            loss, parts = _width_loss(output, batch, teacher_targets, higher_logits, distill)
            total = total + loss
            higher_logits = output.logits.detach()
            per_width.append(parts)
        metrics = {
            "ce": sum(p["ce"] for p in per_width) / len(widths),
            "kd": sum(p["kd"] for p in per_width) / len(widths),
            "kd_inter": sum(p["kd_inter"] for p in per_width[1:]) / max(len(widths) - 1, 1),
            "bits": sum(_bits_metric(b) for b in widths) / len(widths),
        }
        for bits, parts in zip(widths, per_width, strict=True):
            metrics[f"ce_{'fp' if bits is None else f'{bits}bit'}"] = parts["ce"]
        return total, {"loss": float(total.detach()), **metrics, "tokens": tokens}

    return loss_fn


def make_eval_loss(bits: int | str | None) -> LossFn:
    """An eval loss fn: the HF cross-entropy with the model at ``bits`` (``None``/"fp": FP).

    Metrics: ``loss``, ``bits`` and ``tokens`` (for the engine's token-weighted mean).
    """
    width = check_precision("bits", bits)

    def eval_loss(
        model: nn.Module, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        _switchable_of(model).set_precision(width)
        loss, metrics = causal_lm_loss(model, batch, step)
        return loss, {"loss": float(loss.detach()), "bits": _bits_metric(width), **metrics}

    return eval_loss


def _forward(
    model: nn.Module, batch: dict[str, torch.Tensor], precisions: list[int | None] | None = None
) -> Any:
    """The (possibly DDP-wrapped) student's HF output, or one output per width of ``precisions``."""
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "labels": batch["labels"],
        "use_cache": False,
    }
    return model(**inputs) if precisions is None else model(precisions=precisions, **inputs)


def _width_loss(
    output: Any,
    batch: dict[str, torch.Tensor],
    teacher_targets: SoftTargets | None,
    higher_logits: torch.Tensor | None,
    distill: DistillConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one width's HF ``output``: ``(loss, {ce, kd, kd_inter})``."""
    loss = distill.ce_weight * output.loss
    parts = {"ce": float(output.loss.detach()), "kd": 0.0, "kd_inter": 0.0}
    if teacher_targets is not None:
        kd = _kl_to_targets(output.logits, teacher_targets)
        loss = loss + distill.kd_weight * kd
        parts["kd"] = float(kd.detach())
    if higher_logits is not None and distill.inter_width_kd_weight > 0:
        kd = distillation_kl(output.logits, higher_logits, batch["labels"], distill.temperature)
        loss = loss + distill.inter_width_kd_weight * kd
        parts["kd_inter"] = float(kd.detach())
    return loss, parts


def _teacher_logits(teacher: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Teacher logits ``(B, T, V)`` without gradients, moving the teacher to the batch first."""
    device = batch["input_ids"].device
    first = next(teacher.parameters(), None)
    if first is not None and first.device != device:
        teacher.to(device)
    with torch.no_grad():
        return teacher(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False
        ).logits


def _switchable_of(model: nn.Module) -> nn.Module:
    """The module with ``set_precision`` inside DDP (``.module``) / compile (``._orig_mod``)."""
    inner = model
    while not hasattr(inner, "set_precision"):
        unwrapped = getattr(inner, "module", None) or getattr(inner, "_orig_mod", None)
        if unwrapped is None:
            raise TypeError(
                f"model: {type(model).__name__} has no set_precision; the switchable loss "
                "needs a SwitchableLM (possibly wrapped by DDP or torch.compile)"
            )
        inner = unwrapped
    return inner


def _precision_rank(bits: int | None) -> float:
    return math.inf if bits is None else bits


def _bits_metric(bits: int | None) -> float:
    return FP_BITS_METRIC if bits is None else float(bits)


def _check_widths(key: str, widths: Any) -> list[int | None]:
    if not isinstance(widths, list | tuple) or not widths:
        raise ValueError(f"{key}: expected a non-empty list of bit widths, got {widths!r}")
    return [check_precision(key, width) for width in widths]


def _check_int(key: str, value: Any, *, minimum: int, needed_by: str | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        reason = f" (strategy {needed_by!r} needs it)" if needed_by else ""
        raise ValueError(f"{key}: expected an int >= {minimum}{reason}, got {value!r}")
