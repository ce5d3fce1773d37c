"""Atomic checkpoints, checkpoint listing and rotation, and the best-model folder.

Layout of one run folder (``<output_dir>/<run_name>/``, see :mod:`~.runs`)::

    checkpoint-<step>/
        model.safetensors        # Accelerate save_state: model (FSDP/DeepSpeed write their own files)
        optimizer.bin            # optimizer state
        scheduler.bin            # lr scheduler state
        random_states_<rank>.pkl # python/numpy/torch(/cuda) RNG states, one per process
        scaler.pt                # fp16 GradScaler, when used
        config.json              # the TrainingConfig as given
        run_config.json          # what resume compares: result-affecting fields + run_config
        trainer_state.json       # counters, data position, best metric, history (written last)
    best/                        # best weights: HF save_pretrained, a peft adapter, or model.safetensors
        best_model_info.json     # {"step": ..., "<metric>": ..., "trainable_only": ...}

A checkpoint is written into ``.tmp-checkpoint-<step>/`` beside its target (one name every
process can compute), every file is fsynced, then the folder is renamed into place
(:func:`router_pipelines.storage.replace_directory`). A run killed at any moment leaves
either no ``checkpoint-<step>`` or a complete one; discovery also requires
``trainer_state.json`` (written last), so a folder copied in by hand half-way is never taken.
A resumed run removes the ``.tmp-*`` leftovers of its folder before it starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import clean_state_dict_for_safetensors
from torch import nn

from router_pipelines.storage import (
    TMP_PREFIX,
    WEIGHTS_NAME,
    fsync_tree,
    replace_directory,
    write_json,
)
from router_pipelines.training.config import TrainingConfig
from router_pipelines.training.state import TrainerState
from router_pipelines.training.weights import CONFIG_NAME, trainable_names

logger = logging.getLogger(__name__)

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE_NAME = "trainer_state.json"
RUN_CONFIG_NAME = "run_config.json"
BEST_DIR_NAME = "best"
BEST_INFO_NAME = "best_model_info.json"


def checkpoint_dir(run_dir: str | Path, step: int) -> Path:
    return Path(run_dir) / f"checkpoint-{step}"


def is_complete_checkpoint(path: Path) -> bool:
    """A ``checkpoint-<step>`` folder whose ``trainer_state.json`` (written last) exists."""
    return bool(CHECKPOINT_RE.match(path.name)) and (path / TRAINER_STATE_NAME).is_file()


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints directly in ``run_dir`` as ``(step, path)``, oldest first."""
    root = Path(run_dir)
    if not root.is_dir():
        return []
    found = [
        (int(CHECKPOINT_RE.match(path.name).group(1)), path)
        for path in root.iterdir()
        if path.is_dir() and is_complete_checkpoint(path)
    ]
    return sorted(found)


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint of one run folder with the highest step, or ``None``.

    Across run folders, ``resume_from_checkpoint: latest`` uses
    :func:`router_pipelines.training.runs.find_latest_checkpoint` (newest save) instead.
    """
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1][1] if checkpoints else None


def load_trainer_state(checkpoint: str | Path) -> TrainerState:
    return TrainerState.from_dict(read_json(Path(checkpoint) / TRAINER_STATE_NAME))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: Path,
    config: TrainingConfig,
    state: TrainerState,
    run_settings: Mapping[str, Any],
    add_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``<run_dir>/checkpoint-<global_step>`` atomically; a collective call.

    Accelerate's ``save_state`` writes the model, optimizer, scheduler and the RNG states of
    every process into the temporary folder (FSDP/DeepSpeed write their own sharded files
    there); then ``add_files(folder)`` runs on every process (the callbacks' ``on_save``: a
    family's own files, such as a consolidated weights file); the main process adds
    ``config.json``, ``run_config.json`` and, last, ``trainer_state.json`` (with ``saved_at``,
    UTC seconds), fsyncs and renames it into place, so the added files are part of the
    checkpoint or there is no checkpoint.
    """
    final = checkpoint_dir(run_dir, state.global_step)
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    with _quiet_about_tied_tensors():
        accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if add_files is not None:
        add_files(tmp)
        accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / CONFIG_NAME, dataclasses.asdict(config))
        write_json(tmp / RUN_CONFIG_NAME, run_settings)
        write_json(tmp / TRAINER_STATE_NAME, {**state.to_dict(), "saved_at": time.time()})
        fsync_tree(tmp)
        replace_directory(tmp, final)
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
    ``load_state`` / ``storage.load_weights`` accept exactly those missing keys (resume is
    tested bit-exact), so on every checkpoint the warning would only be noise."""
    notice = _TiedTensorNotice()
    accelerate_logger = logging.getLogger("accelerate.utils.other")
    accelerate_logger.addFilter(notice)
    try:
        yield
    finally:
        accelerate_logger.removeFilter(notice)


def rotate_checkpoints(run_dir: str | Path, limit: int | None, keep_step: int | None) -> None:
    """Delete all but the ``limit`` newest checkpoints of ``run_dir``; ``keep_step``'s is kept too.

    Only ``checkpoint-*`` folders directly in this run's folder are considered: other runs'
    folders and ``best/`` are never touched. Call on the main process only.
    """
    if limit is None:
        return
    checkpoints = list_checkpoints(run_dir)
    for step, path in checkpoints[: max(len(checkpoints) - limit, 0)]:
        if step != keep_step:
            logger.info("save_total_limit=%d: deleting %s", limit, path)
            shutil.rmtree(path)


def save_best_model(
    accelerator: Accelerator,
    model: nn.Module,
    run_dir: Path,
    info: dict[str, Any],
    trainable_only: bool,
) -> Path:
    """Write the prepared ``model``'s weights to ``<run_dir>/best``; a collective call.

    HF models and peft models (anything with ``save_pretrained``) are saved with it (HF:
    safetensors plus their config, loadable with ``from_pretrained``; peft: the adapter);
    other modules as ``model.safetensors``. The state dict comes from
    ``accelerator.get_state_dict``, which gathers FSDP / DeepSpeed ZeRO-3 shards. With
    ``trainable_only`` only the parameters with ``requires_grad`` are written.
    """
    final = run_dir / BEST_DIR_NAME
    tmp = final.with_name(f"{TMP_PREFIX}{final.name}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if hasattr(unwrapped, "save_pretrained") or trainable_only:
        state_dict = accelerator.get_state_dict(model)
        if trainable_only:
            names = trainable_names(unwrapped)
            state_dict = {k: v for k, v in state_dict.items() if k in names}
        if accelerator.is_main_process:
            if hasattr(unwrapped, "save_pretrained"):
                # transformers pops the entries it writes: hand it a copy
                unwrapped.save_pretrained(str(tmp), state_dict=dict(state_dict))
            else:
                tmp.mkdir(parents=True)
                accelerator.save(
                    clean_state_dict_for_safetensors(state_dict),
                    tmp / WEIGHTS_NAME,
                    safe_serialization=True,
                )
    else:
        accelerator.save_model(model, str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / BEST_INFO_NAME, {**info, "trainable_only": trainable_only})
        fsync_tree(tmp)
        replace_directory(tmp, final)
    accelerator.wait_for_everyone()
    return final
