"""Atomic checkpoints, checkpoint discovery and rotation, and the best-model folder.

Layout under ``output_dir``::

    checkpoint-<step>/
        model.safetensors        # Accelerate save_state: model (FSDP/DeepSpeed write their own files)
        optimizer.bin            # optimizer state
        scheduler.bin            # lr scheduler state
        random_states_<rank>.pkl # python/numpy/torch(/cuda) RNG states, one per process
        scaler.pt                # fp16 GradScaler, when used
        config.json              # the resolved TrainingConfig
        trainer_state.json       # counters, data position, best eval, history (written last)
    best/                        # best-eval-loss weights: HF save_pretrained or model.safetensors
        best_model_info.json     # {"step": ..., "eval_loss": ...}

A checkpoint is written into ``.tmp-checkpoint-<step>/`` beside its target, every file
is fsynced, then the folder is renamed into place. A run killed at any moment
therefore leaves either no ``checkpoint-<step>`` or a complete one; discovery also
requires ``trainer_state.json`` (written last) so a folder copied in by hand half-way
is never taken as the latest. Stale ``.tmp-*`` folders are removed by the next save.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import safetensors.torch
from accelerate import Accelerator
from torch import nn

from router_pipelines.training.config import TrainingConfig

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"
CONFIG_NAME = "config.json"
BEST_DIR_NAME = "best"
BEST_INFO_NAME = "best_model_info.json"


@dataclass
class TrainerState:
    """The engine's own counters; everything else in a checkpoint is a ``state_dict``."""

    global_step: int = 0  # optimizer steps completed
    epoch: int = 0  # current epoch (0-based)
    batch_in_epoch: int = 0  # micro-batches of the current epoch consumed by each process
    global_batch_size: int = 0  # examples per micro-batch over all processes
    tokens_seen: int = 0  # input tokens over all processes
    best_eval_loss: float | None = None
    best_step: int | None = None
    patience_counter: int = 0  # evaluations since the last improvement > threshold
    stopped_early: bool = False
    history: dict[str, list[tuple[int, float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainerState:
        values = dict(values)
        values["history"] = {
            key: [(int(step), float(value)) for step, value in points]
            for key, points in values.get("history", {}).items()
        }
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / f"checkpoint-{step}"


def list_checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``output_dir`` as ``(step, path)``, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = CHECKPOINT_RE.match(path.name)
        if match and path.is_dir() and (path / TRAINER_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1][1] if checkpoints else None


def resolve_resume_checkpoint(config: TrainingConfig) -> Path | None:
    """Turn ``config.resume_from_checkpoint`` into a checkpoint folder (or ``None``: fresh start).

    Raises:
        ValueError: for a path that does not exist or is not a complete checkpoint.
    """
    value = config.resume_from_checkpoint
    if value is None:
        return None
    if value == "latest":
        latest = find_latest_checkpoint(config.output_dir)
        if latest is None:
            logger.info(
                "resume_from_checkpoint='latest': no checkpoint in %s, starting fresh",
                config.output_dir,
            )
        return latest
    path = Path(value)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint: {value!r} is not a directory")
    if not (path / TRAINER_STATE_NAME).is_file():
        raise ValueError(
            f"resume_from_checkpoint: {value!r} has no {TRAINER_STATE_NAME}; it is not a complete "
            "checkpoint written by this engine"
        )
    return path


def load_trainer_state(checkpoint: str | Path) -> TrainerState:
    with open(Path(checkpoint) / TRAINER_STATE_NAME, encoding="utf-8") as f:
        return TrainerState.from_dict(json.load(f))


def save_checkpoint(accelerator: Accelerator, config: TrainingConfig, state: TrainerState) -> Path:
    """Write ``checkpoint-<global_step>`` atomically; a collective call (every process).

    Accelerate's ``save_state`` writes the model, optimizer, scheduler and the RNG
    states of every process into a temporary folder (FSDP/DeepSpeed write their own
    sharded files there); the main process adds ``config.json`` and, last,
    ``trainer_state.json``, fsyncs and renames the folder into place.
    """
    root = Path(config.output_dir)
    final = checkpoint_dir(root, state.global_step)
    tmp = root / f".tmp-{final.name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _quiet_about_tied_tensors():
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / CONFIG_NAME, dataclasses.asdict(config))
        write_json(tmp / TRAINER_STATE_NAME, state.to_dict())
        _fsync_tree(tmp)
        _replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final


class _TiedTensorNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@contextlib.contextmanager
def _quiet_about_tied_tensors() -> Iterator[None]:
    """Drop Accelerate's "Removed shared tensor ... check ... while reloading" warning during
    one save. safetensors stores a shared tensor once (GPT-2's tied LM head, a weight quantizer
    shared by a tied embedding and LM head); the ties are made by the model's structure, and
    ``load_state`` / :func:`load_model_weights` accept exactly those missing keys (resume is
    tested bit-exact), so on every checkpoint the warning would only be noise."""
    notice = _TiedTensorNotice()
    accelerate_logger = logging.getLogger("accelerate.utils.other")
    accelerate_logger.addFilter(notice)
    try:
        yield
    finally:
        accelerate_logger.removeFilter(notice)


def rotate_checkpoints(output_dir: str | Path, limit: int | None, keep_step: int | None) -> None:
    """Delete all but the ``limit`` newest checkpoints; the one at ``keep_step`` is kept too.

    Call on the main process only. ``best/`` is never touched.
    """
    if limit is None:
        return
    checkpoints = list_checkpoints(output_dir)
    for step, path in checkpoints[: max(len(checkpoints) - limit, 0)]:
        if step != keep_step:
            logger.info("save_total_limit=%d: deleting %s", limit, path)
            shutil.rmtree(path)


def save_best_model(
    accelerator: Accelerator, model: nn.Module, output_dir: str | Path, info: dict[str, Any]
) -> Path:
    """Write the prepared ``model``'s weights to ``output_dir/best``; a collective call.

    HF models (anything with ``save_pretrained``) are saved with it (safetensors plus
    their config, loadable with ``from_pretrained``); other modules as
    ``model.safetensors`` via ``accelerator.save_model``. The state dict comes from
    ``accelerator.get_state_dict``, which gathers FSDP / DeepSpeed ZeRO-3 shards.
    """
    root = Path(output_dir)
    final, tmp = root / BEST_DIR_NAME, root / f".tmp-{BEST_DIR_NAME}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if hasattr(unwrapped, "save_pretrained"):
        state_dict = accelerator.get_state_dict(model)
        if accelerator.is_main_process:
            unwrapped.save_pretrained(str(tmp), state_dict=state_dict)
    else:
        accelerator.save_model(model, str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / BEST_INFO_NAME, info)
        _fsync_tree(tmp)
        _replace_dir(tmp, final)
    accelerator.wait_for_everyone()
    return final


def load_model_weights(model: nn.Module, directory: str | Path) -> None:
    """Load ``model.safetensors`` (or its sharded index) from ``directory`` into ``model``.

    Keys left out on save because they are tied to a saved tensor (e.g. GPT-2's
    ``lm_head.weight``) are accepted as missing; any other mismatch raises.

    Raises:
        ValueError: naming the unexpected or missing keys.
    """
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        with open(index, encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state_dict = {}
    for name in files:
        state_dict.update(safetensors.torch.load_file(directory / name))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    current = model.state_dict()
    loaded_storage = {current[k].data_ptr() for k in state_dict if k in current}
    untied = [k for k in missing if current[k].data_ptr() not in loaded_storage]
    if unexpected or untied:
        raise ValueError(
            f"{directory}: weights do not match the model: unexpected keys {unexpected[:5]}, "
            f"missing keys {untied[:5]}"
        )


def write_json(path: Path, payload: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk so the rename publishes complete data."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved aside first, then deleted.

    ``os.replace`` cannot overwrite a non-empty directory, hence the two renames; the
    gap between them is the only moment ``dst`` is absent.
    """
    old = dst.with_name(f".old-{dst.name}")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)
