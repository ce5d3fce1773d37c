"""The switchable family's losses: distillation, the training loss and the eval loss.

They plug into the shared engine through the :data:`~router_pipelines.training.losses.LossFn`
contract (``loss_fn(model, batch, step) -> (loss, metrics)``). ``model`` is a
:class:`~router_pipelines.models.switchable.SwitchableLM`, possibly wrapped by Accelerate
(DDP ``.module``) or ``torch.compile`` (``._orig_mod``): precision is set on the wrapped
model, the forward goes through the wrapper.

Metrics are detached 0-d tensors (``bits``, a constant, is a Python float), so the engine can
read them once per logging step instead of waiting on every micro-batch's forward; ``tokens``
is the count the engine weights eval means by.

Under DDP, only the quantizers of the widths trained in a step get gradients, so the engine
must build DDP with ``find_unused_parameters=True``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from router_pipelines.config import check_positive
from router_pipelines.constants import IGNORE_INDEX
from router_pipelines.families.switchable.schedules import (
    SwitchingConfig,
    bit_widths_for_step,
    bits_metric,
)
from router_pipelines.models.quantization import check_precision

if TYPE_CHECKING:  # the contract's type only: importing the engine package is not needed here
    from router_pipelines.training.losses import LossFn


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

    Metrics (detached 0-d tensors; ``bits`` a float): ``loss``, ``ce``, ``kd``, ``bits``
    (32 for FP), ``tokens``; joint reports the
    means over widths for ``ce``/``kd``/``bits``, plus ``kd_inter``, ``ce_<b>bit``
    (``ce_fp``) per width and ``loss_per_width`` (the summed loss divided by the number of
    widths: the engine logs the sum as ``train_loss``, this as ``train_loss_per_width``).
    """
    if teacher is not None:
        teacher.eval()
        teacher.requires_grad_(False)
    prepared = []  # becomes [True] once the quantizers were initialised on the first batch

    def loss_fn(
        model: nn.Module, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
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
        tokens = (batch["labels"][:, 1:] != IGNORE_INDEX).sum().float()
        if switching.strategy != "joint":
            student.set_precision(widths[0])
            output = _forward(model, batch)
            loss, parts = _width_loss(output, batch, teacher_targets, None, distill)
            metrics = {"ce": parts["ce"], "kd": parts["kd"], "bits": bits_metric(widths[0])}
            return loss, {"loss": loss.detach(), **metrics, "tokens": tokens}
        # One forward call runs every width (DDP allows one forward per backward).
        outputs = _forward(model, batch, precisions=widths)
        total: Any = 0.0
        higher_logits, per_width = None, []
        for output in outputs:
            loss, parts = _width_loss(output, batch, teacher_targets, higher_logits, distill)
            total = total + loss
            higher_logits = output.logits.detach()
            per_width.append(parts)
        metrics = {
            "ce": sum(p["ce"] for p in per_width) / len(widths),
            "kd": sum(p["kd"] for p in per_width) / len(widths),
            # the highest width has no higher one: its kd_inter is a zero tensor, the sum's start
            "kd_inter": sum((p["kd_inter"] for p in per_width[1:]), per_width[0]["kd_inter"])
            / max(len(widths) - 1, 1),
            "bits": sum(bits_metric(b) for b in widths) / len(widths),
            # The joint loss is the SUM over widths (its gradient = summed gradients), so the
            # engine's train_loss is ~len(widths) times an eval loss; this mean is comparable.
            "loss_per_width": total.detach() / len(widths),
        }
        for bits, parts in zip(widths, per_width, strict=True):
            metrics[f"ce_{'fp' if bits is None else f'{bits}bit'}"] = parts["ce"]
        return total, {"loss": total.detach(), **metrics, "tokens": tokens}

    return loss_fn


def make_eval_loss(bits: int | str | None) -> LossFn:
    """An eval loss fn: the HF cross-entropy with the model at ``bits`` (``None``/"fp": FP).

    Metrics: ``loss``, ``bits`` and ``tokens`` (for the engine's token-weighted mean).
    """
    width = check_precision("bits", bits)

    def eval_loss(
        model: nn.Module, batch: dict[str, torch.Tensor], step: int
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        from router_pipelines.training.losses import causal_lm_loss

        _switchable_of(model).set_precision(width)
        loss, metrics = causal_lm_loss(model, batch, step)
        return loss, {"loss": loss.detach(), "bits": bits_metric(width), **metrics}

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
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss of one width's HF ``output``: ``(loss, {ce, kd, kd_inter})``, parts detached."""
    loss = distill.ce_weight * output.loss
    zero = output.loss.new_zeros((), dtype=torch.float32).detach()
    parts = {"ce": output.loss.detach(), "kd": zero, "kd_inter": zero}
    if teacher_targets is not None:
        kd = _kl_to_targets(output.logits, teacher_targets)
        loss = loss + distill.kd_weight * kd
        parts["kd"] = kd.detach()
    if higher_logits is not None and distill.inter_width_kd_weight > 0:
        kd = distillation_kl(output.logits, higher_logits, batch["labels"], distill.temperature)
        loss = loss + distill.inter_width_kd_weight * kd
        parts["kd_inter"] = kd.detach()
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
