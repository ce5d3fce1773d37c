"""The training engine's config: one dataclass, validated on construction.

Built from a Kedro params dict with
``config_from_dict(TrainingConfig, params["training"], "pretrain.training")``; every
bad value raises a ``ValueError`` whose message starts with the field name.

:data:`RESULT_NEUTRAL_FIELDS` says which fields do not change what a run computes; resume
compares every other field (see :mod:`router_pipelines.training.runs`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from router_pipelines.config import (
    check_bool,
    check_choice,
    check_int,
    check_non_empty_str,
    check_optional_int,
    check_positive,
)

SCHEDULERS = ("cosine", "linear", "constant")
MIXED_PRECISIONS = ("auto", "no", "fp16", "bf16")
# torch.compile's modes (torch._inductor.list_mode_options() plus "default")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PARAM_GROUP_KEYS = ("pattern", "lr", "lr_multiplier", "weight_decay")
RUN_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
EVAL_PREFIX = "eval_"
# The settings of a run that evaluates, saves and shows nothing (an LR sweep, a short inner
# training such as a budget router, a benchmark's training): ``dataclasses.replace(config,
# **NOTHING_SAVED)``, or ``params["training"].update(NOTHING_SAVED)`` on a raw group.
NOTHING_SAVED = {
    "eval_steps": None,
    "save_steps": None,
    "save_at_end": False,
    "save_best_model": False,
    "load_best_model_at_end": False,
    "progress_bar": False,
}

# TrainingConfig fields that do not change what a run computes: the trained weights, the
# weights in best/, the model TrainResult returns and the step training stops at. Resume
# ignores them (a run may continue with another value) and result_affecting_fields() leaves
# them out; every other field is compared. Two fields get special treatment in runs.py:
# mixed_precision is compared as the precision really used on the device (``auto`` resolves
# per machine), and max_steps may grow on resume when the lr schedule does not depend on it.
RESULT_NEUTRAL_FIELDS: dict[str, str] = {
    "output_dir": "where run folders live, not what they hold",
    "run_name": "the folder's name",
    "resume_from_checkpoint": "where to continue from; the run is the same either way",
    "progress_bar": "display only",
    "progress_metrics": "display only",
    "logging_steps": "train logs only read the losses; they touch neither RNG nor weights",
    "num_workers": "the data order is a pure function of (seed, epoch); workers only add speed",
    "save_steps": "when checkpoints are written; saving reads state and resume is bit-exact",
    "save_at_end": "whether the last step is checkpointed",
    "save_total_limit": "how many checkpoints are kept on disk",
    "save_best_model": "whether best/ is written; the best step is tracked either way",
    "save_only_trainable": "what a checkpoint stores; loading reads the kind from the checkpoint",
    "cpu": "where it runs; the precision that implies is compared as mixed_precision",
    "gradient_checkpointing": "recomputes activations with the RNG replayed: the same numbers "
    "(bit-identical on CPU, tests/training/test_runs.py)",
    "torch_compile": "how forward runs, not what it computes: the same module, parameters and "
    "state-dict keys (the eager backend is bit-identical, tests/training/test_compile.py; "
    "inductor's fused kernels differ at float rounding, as another device does)",
    "torch_compile_backend": "see torch_compile",
    "torch_compile_mode": "see torch_compile",
    "ddp_find_unused_parameters": "DDP bookkeeping; the gradients are the same",
}


@dataclass
class TrainingConfig:
    """Everything the engine needs to train one model; no model-family knowledge.

    Step counts are optimizer steps (one step = ``gradient_accumulation_steps``
    micro-batches of ``batch_size`` examples on each process).
    """

    output_dir: str  # run folders land here: <output_dir>/<run_name>/checkpoint-<step>/, best/
    run_name: str | None = None  # the run's folder; None: a fresh UTC-time name per fresh run
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
    # auto (bf16 on CUDA with bf16 support, else no) | no | fp16 | bf16; see describe_precision
    mixed_precision: str = "auto"
    cpu: bool = False  # force the CPU even when CUDA or MPS exist
    gradient_checkpointing: bool = False  # trade compute for activation memory
    # compile the model's forward in place (nn.Module.compile) before training; the HF Trainer's
    # names: a backend or mode implies torch_compile. false: `accelerate launch --dynamo_backend`
    # (ACCELERATE_DYNAMO_BACKEND / _MODE) decides, off when unset (runtime.compile_settings)
    torch_compile: bool = False
    torch_compile_backend: str | None = None  # a torch._dynamo backend; None: inductor
    torch_compile_mode: str | None = None  # default | reduce-overhead | max-autotune | ...
    frozen_modules_eval: bool = True  # sub-modules with only frozen params stay in eval mode
    eval_steps: int | None = 50  # evaluate every N optimizer steps; None: never
    eval_max_batches: int | None = None  # cap on eval micro-batches per process; None: all
    eval_batch_size: int | None = None  # eval micro-batch size; None: batch_size
    metric_for_best_model: str = "eval_loss"  # any logged eval metric ("eval_" may be left off)
    greater_is_better: bool | None = None  # None: False when the metric ends in "loss", else True
    save_steps: int | None = 50  # checkpoint every N optimizer steps; None: never (see save_at_end)
    save_at_end: bool = True  # also checkpoint the final step when save_steps did not land on it
    save_total_limit: int | None = 3  # keep the N newest checkpoints (plus the best step's)
    save_best_model: bool = True  # write the best weights to <run>/best
    save_only_trainable: bool = False  # checkpoints and best/ hold only requires_grad params
    load_best_model_at_end: bool = False  # TrainResult.model gets the best weights (HF precedent)
    early_stopping: bool = False  # stop when metric_for_best_model stops improving
    early_stopping_patience: int = 3  # evaluations without enough improvement before stopping
    early_stopping_threshold: float = 0.0  # minimum improvement of the metric that counts
    logging_steps: int = 10  # log train metrics every N optimizer steps (and at the last step)
    resume_from_checkpoint: str | None = None  # a checkpoint dir, or "latest" (see runs.py)
    seed: int = 42  # global seed and data-order seed (epoch e shuffles with seed + e)
    num_workers: int = 0  # DataLoader worker processes
    progress_bar: bool = True  # tqdm bar on the main process
    # train metrics shown in the bar beside loss, lr, tok_s: {metric key: label}, e.g.
    # {train_ce: CE}; display only, a key not logged at a step is left out
    progress_metrics: dict[str, str] = field(default_factory=dict)
    ddp_find_unused_parameters: bool = False  # DDP: allow parameters without gradients in a step

    def __post_init__(self) -> None:
        check_non_empty_str("output_dir", self.output_dir)
        check_output_dir(self.output_dir)
        if self.run_name is not None and (
            not isinstance(self.run_name, str) or not RUN_NAME_RE.match(self.run_name)
        ):
            raise ValueError(
                "run_name: expected null or a folder name of letters, digits, '_', '-', '.' "
                f"(not starting with '.', '_' or '-'), got {self.run_name!r}"
            )
        if isinstance(self.run_name, str) and (
            self.run_name == "best" or self.run_name.startswith("checkpoint-")
        ):
            raise ValueError(f"run_name: {self.run_name!r} is reserved for the engine's folders")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "logging_steps"):
            check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "num_workers", "seed"):
            check_int(name, getattr(self, name), minimum=0)
        check_int("early_stopping_patience", self.early_stopping_patience, minimum=1)
        for name in (
            "eval_steps",
            "eval_max_batches",
            "eval_batch_size",
            "save_steps",
            "save_total_limit",
        ):
            check_optional_int(name, getattr(self, name), minimum=1)
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
        check_compile_backend("torch_compile_backend", self.torch_compile_backend)
        if self.torch_compile_mode is not None:
            check_choice("torch_compile_mode", self.torch_compile_mode, COMPILE_MODES)
        for name in (
            "cpu",
            "gradient_checkpointing",
            "torch_compile",
            "frozen_modules_eval",
            "save_at_end",
            "save_best_model",
            "save_only_trainable",
            "load_best_model_at_end",
            "early_stopping",
            "progress_bar",
            "ddp_find_unused_parameters",
        ):
            check_bool(name, getattr(self, name))
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True  # the HF Trainer's rule: naming either one turns it on
        check_non_empty_str("metric_for_best_model", self.metric_for_best_model)
        if not isinstance(self.progress_metrics, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and k and v
            for k, v in self.progress_metrics.items()
        ):
            raise ValueError(
                "progress_metrics: expected a mapping of logged metric names to bar labels "
                f"(e.g. {{train_ce: CE}}), got {self.progress_metrics!r}"
            )
        if self.greater_is_better is not None:
            check_bool("greater_is_better", self.greater_is_better)
        self.adam_betas = _check_betas(self.adam_betas)
        self.param_groups = [
            _check_param_group(i, g) for i, g in enumerate(self.param_groups or [])
        ]
        check_non_empty_str("resume_from_checkpoint", self.resume_from_checkpoint, optional=True)
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

    @property
    def best_metric_name(self) -> str:
        """``metric_for_best_model`` as logged: with the ``eval_`` prefix (HF Trainer rule)."""
        name = self.metric_for_best_model
        return name if name.startswith(EVAL_PREFIX) else f"{EVAL_PREFIX}{name}"

    @property
    def best_metric_greater_is_better(self) -> bool:
        """``greater_is_better``, or (when null) False for a metric ending in "loss", else True."""
        if self.greater_is_better is not None:
            return self.greater_is_better
        return not self.best_metric_name.endswith("loss")

    @property
    def schedule_depends_on_max_steps(self) -> bool:
        """Whether the lr at a step changes with ``max_steps`` (cosine/linear decay, warmup_ratio)."""
        return self.scheduler != "constant" or bool(self.warmup_ratio)


def check_output_dir(output_dir: str) -> None:
    """Raise ``ValueError("output_dir: ...")`` when the path, or a folder above it, is a file."""
    path = Path(output_dir)
    for candidate in (path, *path.parents):
        if candidate.exists():
            if not candidate.is_dir():
                where = "is a file" if candidate == path else f"is below the file {candidate}"
                raise ValueError(
                    f"output_dir: {output_dir!r} {where}, not a folder; point output_dir at a "
                    "folder (it is created when missing)"
                )
            return


def check_compile_backend(key: str, value: Any) -> None:
    """``value`` is null or a backend ``torch.compile`` knows (``torch._dynamo.list_backends``)."""
    check_non_empty_str(key, value, optional=True)
    if value is None:
        return
    import torch._dynamo  # only when a backend is named: the import takes about a second

    check_choice(key, value, torch._dynamo.list_backends(exclude_tags=()))


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
