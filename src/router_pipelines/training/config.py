"""The training engine's config: one dataclass, validated on construction.

Built from a Kedro params dict with
``config_from_dict(TrainingConfig, params["training"], "pretrain.training")``; every
bad value raises a ``ValueError`` whose message starts with the field name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from router_pipelines.config import check_choice, check_positive

SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
PARAM_GROUP_KEYS = ("pattern", "lr", "lr_multiplier", "weight_decay")


@dataclass
class TrainingConfig:
    """Everything the engine needs to train one model; no model-family knowledge.

    Step counts are optimizer steps (one step = ``gradient_accumulation_steps``
    micro-batches of ``batch_size`` examples on each process).
    """

    output_dir: str  # checkpoint-<step>/ and best/ land here
    max_steps: int = 100  # optimizer steps
    batch_size: int = 8  # examples per micro-batch per process
    gradient_accumulation_steps: int = 1  # micro-batches per optimizer step
    learning_rate: float = 3e-4  # base lr of every parameter not matched by param_groups
    weight_decay: float = 0.01  # AdamW decay; never applied to 0-/1-D params (biases, norms)
    # [{"pattern": regex on the parameter name, "lr": x | "lr_multiplier": m,
    #   "weight_decay": optional override}]; the first matching entry wins
    param_groups: list[dict[str, Any]] = field(default_factory=list)
    adam_betas: tuple[float, float] = (0.9, 0.95)  # a 2-item list from YAML is accepted
    adam_eps: float = 1e-8
    scheduler: str = "cosine"  # cosine | linear | constant, after linear warmup
    warmup_steps: int = 0  # linear warmup length in optimizer steps
    warmup_ratio: float = 0.0  # warmup as a fraction of max_steps (exclusive with warmup_steps)
    max_grad_norm: float | None = 1.0  # clip the global grad norm; None disables clipping
    mixed_precision: str = (
        "auto"  # auto (bf16 on CUDA with bf16 support, else no) | no | fp16 | bf16
    )
    cpu: bool = False  # force the CPU even when CUDA or MPS exist
    gradient_checkpointing: bool = False  # trade compute for activation memory
    eval_steps: int | None = 50  # evaluate every N optimizer steps; None: never
    eval_max_batches: int | None = None  # cap on eval micro-batches per process; None: all
    eval_batch_size: int | None = None  # eval micro-batch size; None: batch_size
    save_steps: int | None = (
        50  # checkpoint every N optimizer steps; None: never (but see save_at_end)
    )
    save_at_end: bool = True  # also checkpoint the final step when save_steps did not land on it
    save_total_limit: int | None = (
        3  # keep the N newest checkpoints (plus the best step's); None: all
    )
    save_best_model: bool = True  # write the best-eval-loss weights to output_dir/best
    load_best_model_at_end: bool = False  # TrainResult.model gets the best weights (HF precedent)
    early_stopping: bool = False  # stop when eval loss stops improving
    early_stopping_patience: int = 3  # evaluations without enough improvement before stopping
    early_stopping_threshold: float = 0.0  # minimum eval-loss decrease that counts as improvement
    logging_steps: int = 10  # log train metrics every N optimizer steps (and at the last step)
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest" under output_dir
    seed: int = 42  # global seed and data-order seed (epoch e shuffles with seed + e)
    num_workers: int = 0  # DataLoader worker processes
    progress_bar: bool = True  # tqdm bar on the main process
    ddp_find_unused_parameters: bool = False  # DDP: allow parameters without gradients in a step

    def __post_init__(self) -> None:
        if not isinstance(self.output_dir, str) or not self.output_dir:
            raise ValueError(
                f"output_dir: expected a non-empty path string, got {self.output_dir!r}"
            )
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "logging_steps"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "num_workers", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        _check_int("early_stopping_patience", self.early_stopping_patience, minimum=1)
        for name in ("eval_steps", "eval_max_batches", "eval_batch_size", "save_steps"):
            if getattr(self, name) is not None:
                _check_int(name, getattr(self, name), minimum=1)
        if self.save_total_limit is not None:
            _check_int("save_total_limit", self.save_total_limit, minimum=1)
        check_positive("learning_rate", self.learning_rate)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("adam_eps", self.adam_eps)
        check_positive("warmup_ratio", self.warmup_ratio, allow_zero=True)
        check_positive("early_stopping_threshold", self.early_stopping_threshold, allow_zero=True)
        if self.max_grad_norm is not None:
            check_positive("max_grad_norm", self.max_grad_norm)
        if self.warmup_ratio >= 1:
            raise ValueError(f"warmup_ratio: must be < 1, got {self.warmup_ratio!r}")
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError(
                f"warmup_steps: set either warmup_steps ({self.warmup_steps}) or warmup_ratio "
                f"({self.warmup_ratio}), not both"
            )
        if self.warmup_steps > self.max_steps:
            raise ValueError(
                f"warmup_steps: {self.warmup_steps} exceeds max_steps ({self.max_steps})"
            )
        check_choice("scheduler", self.scheduler, SCHEDULERS)
        check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        for name in (
            "cpu",
            "gradient_checkpointing",
            "save_at_end",
            "save_best_model",
            "load_best_model_at_end",
            "early_stopping",
            "progress_bar",
            "ddp_find_unused_parameters",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        self.adam_betas = _check_betas(self.adam_betas)
        self.param_groups = [
            _check_param_group(i, g) for i, g in enumerate(self.param_groups or [])
        ]
        if self.resume_from_checkpoint is not None and (
            not isinstance(self.resume_from_checkpoint, str) or not self.resume_from_checkpoint
        ):
            raise ValueError(
                "resume_from_checkpoint: expected null, 'latest' or a checkpoint path, "
                f"got {self.resume_from_checkpoint!r}"
            )
        if self.early_stopping and self.eval_steps is None:
            raise ValueError("early_stopping: true needs eval_steps to be set, got eval_steps=null")
        if self.load_best_model_at_end and not self.save_best_model:
            raise ValueError("load_best_model_at_end: true needs save_best_model: true")

    @property
    def num_warmup_steps(self) -> int:
        """Warmup length in optimizer steps (``warmup_steps``, or ``warmup_ratio * max_steps``)."""
        if self.warmup_ratio:
            return int(round(self.warmup_ratio * self.max_steps))
        return self.warmup_steps


def _check_int(key: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{key}: must be >= {minimum}, got {value!r}")


def _check_betas(betas: Any) -> tuple[float, float]:
    if not isinstance(betas, list | tuple) or len(betas) != 2:
        raise ValueError(f"adam_betas: expected two numbers in [0, 1), got {betas!r}")
    for beta in betas:
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0 <= beta < 1:
            raise ValueError(f"adam_betas: expected two numbers in [0, 1), got {betas!r}")
    return (float(betas[0]), float(betas[1]))


def _check_param_group(index: int, group: Any) -> dict[str, Any]:
    where = f"param_groups[{index}]"
    if not isinstance(group, dict):
        raise ValueError(f"param_groups: {where} must be a mapping, got {group!r}")
    unknown = sorted(set(group) - set(PARAM_GROUP_KEYS))
    if unknown:
        raise ValueError(
            f"param_groups: {where} has unknown key(s) {unknown}; allowed keys are "
            f"{list(PARAM_GROUP_KEYS)}"
        )
    pattern = group.get("pattern")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(
            f"param_groups: {where}.pattern must be a non-empty regex, got {pattern!r}"
        )
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(
            f"param_groups: {where}.pattern {pattern!r} is not a regex: {err}"
        ) from err
    if ("lr" in group) == ("lr_multiplier" in group):
        raise ValueError(f"param_groups: {where} needs exactly one of 'lr' or 'lr_multiplier'")
    for key in ("lr", "lr_multiplier"):
        if key in group:
            check_positive(f"param_groups: {where}.{key}", group[key])
    if "weight_decay" in group:
        check_positive(
            f"param_groups: {where}.weight_decay", group["weight_decay"], allow_zero=True
        )
    return dict(group)
