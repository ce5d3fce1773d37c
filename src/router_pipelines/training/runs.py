"""Run folders and the resume rules.

Every run writes into a folder of its own, ``<output_dir>/<run_name>/`` (checkpoints and
``best/``), so a fresh run can never rotate away, or resume from, another run's checkpoints:

* ``resume_from_checkpoint: null`` starts a fresh run: in ``<output_dir>/<run_name>`` when
  ``run_name`` is set (refused when that folder already holds a run's checkpoints or
  ``best/``), else in a new folder named by the UTC time plus a random suffix
  (``20261201-104512-3fa9c1``), the same on every process;
* ``latest`` resumes the newest complete checkpoint of any run folder under ``output_dir``
  (only ``<output_dir>/<run_name>`` when ``run_name`` is set), and starts fresh when there is
  none. "Newest" is the save time recorded in each checkpoint's ``trainer_state.json``
  (``saved_at``; its file time for checkpoints without it), then the step: file times and
  step numbers of different runs say nothing about which run is newer. Half-written
  ``.tmp-*`` folders are never candidates;
* a checkpoint path resumes that checkpoint;
* a resumed run continues in the folder of its checkpoint.

Resume refuses a checkpoint written with other result-affecting settings: every
``TrainingConfig`` field outside :data:`~.config.RESULT_NEUTRAL_FIELDS` and every entry of the
caller's ``run_config`` (model config, data fingerprint, family settings) is compared, and the
error names each difference with both values.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from router_pipelines.config import format_setting, setting_differences
from router_pipelines.training.checkpoint import (
    BEST_DIR_NAME,
    CHECKPOINT_RE,
    RUN_CONFIG_NAME,
    TRAINER_STATE_NAME,
    is_complete_checkpoint,
    list_checkpoints,
    read_json,
)
from router_pipelines.training.config import RESULT_NEUTRAL_FIELDS, TrainingConfig
from router_pipelines.training.runtime import precision_plan
from router_pipelines.training.weights import CONFIG_NAME

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunPlan:
    """Where a run writes and what it resumes from."""

    run_dir: Path | None  # None: a fresh run whose name is still to be drawn (new_run_name)
    resume_from: Path | None  # the checkpoint to load, or None for a fresh start


def new_run_name() -> str:
    """UTC time plus 6 random hex digits, e.g. ``20261201-104512-3fa9c1`` (sorts by time)."""
    return f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{secrets.token_hex(3)}"


def shared_run_name(accelerator: Accelerator) -> str:
    """A fresh run name drawn on the main process and sent to the others (a collective)."""
    name = [new_run_name() if accelerator.is_main_process else None]
    broadcast_object_list(name, from_process=0)
    return name[0]


def plan_run(config: TrainingConfig) -> RunPlan:
    """Resolve ``run_name`` and ``resume_from_checkpoint`` into a :class:`RunPlan`.

    Raises:
        ValueError: naming the field, for a checkpoint path that is not a complete checkpoint,
            a ``run_name`` that contradicts it, or a fresh run in a folder holding another run.
    """
    value, root = config.resume_from_checkpoint, Path(config.output_dir)
    if value is not None and value != "latest":
        path = Path(value)
        if not path.is_dir():
            raise ValueError(f"resume_from_checkpoint: {value!r} is not a directory")
        if not is_complete_checkpoint(path):
            raise ValueError(
                f"resume_from_checkpoint: {value!r} is not a complete checkpoint written by this "
                f"engine (a checkpoint-<step> folder with {TRAINER_STATE_NAME}); give one, or "
                "'latest'"
            )
        if config.run_name is not None and config.run_name != path.parent.name:
            raise ValueError(
                f"run_name: {config.run_name!r}, but resume_from_checkpoint {value!r} belongs to "
                f"the run folder {path.parent.name!r}; a resumed run continues in its folder"
            )
        _warn_if_not_newest(path)
        return RunPlan(path.parent, path)
    if value == "latest":
        latest = find_latest_checkpoint(root, config.run_name)
        if latest is not None:
            return RunPlan(latest.parent, latest)
        where = root / config.run_name if config.run_name else root
        logger.info("resume_from_checkpoint='latest': no checkpoint in %s, starting fresh", where)
    if config.run_name is None:
        return RunPlan(None, None)
    run_dir = root / config.run_name
    if _holds_a_run(run_dir):
        raise ValueError(
            f"run_name: {str(run_dir)!r} already holds a run's checkpoints or best/; set "
            "resume_from_checkpoint: latest to continue it, or choose another run_name"
        )
    return RunPlan(run_dir, None)


def find_latest_checkpoint(output_dir: str | Path, run_name: str | None = None) -> Path | None:
    """The newest complete checkpoint of the run folders under ``output_dir`` (see the module)."""
    root = Path(output_dir)
    if run_name is not None:
        run_dirs = [root / run_name]
    elif root.is_dir():
        run_dirs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    else:
        run_dirs = []
    candidates = [path for run_dir in run_dirs for _, path in list_checkpoints(run_dir)]
    if not candidates:
        return None
    return max(candidates, key=lambda path: (_saved_at(path), _step(path)))


def _saved_at(checkpoint: Path) -> float:
    state_file = checkpoint / TRAINER_STATE_NAME
    saved_at = read_json(state_file).get("saved_at")
    return float(saved_at) if saved_at is not None else state_file.stat().st_mtime


def _step(checkpoint: Path) -> int:
    return int(CHECKPOINT_RE.match(checkpoint.name).group(1))


def _holds_a_run(run_dir: Path) -> bool:
    if not run_dir.is_dir():
        return False
    return any(
        path.is_dir() and (CHECKPOINT_RE.match(path.name) or path.name == BEST_DIR_NAME)
        for path in run_dir.iterdir()
    )


def _warn_if_not_newest(checkpoint: Path) -> None:
    steps = [step for step, _ in list_checkpoints(checkpoint.parent)]
    if steps and steps[-1] > _step(checkpoint):
        logger.warning(
            "resuming from %s although its run folder holds checkpoint-%d: this run's later "
            "checkpoints will replace those of the same step",
            checkpoint,
            steps[-1],
        )


def result_affecting_fields(
    config: TrainingConfig, device_type: str | None = None
) -> dict[str, Any]:
    """The ``TrainingConfig`` fields that change what a run computes, JSON-ready.

    Every field outside :data:`~.config.RESULT_NEUTRAL_FIELDS`; ``mixed_precision`` is the
    precision really used on ``device_type`` (default: this machine's, see
    :func:`~.runtime.precision_plan`), and the best-model metric and direction are resolved.
    A model's identity can use it as it is.
    """
    values = {
        key: value
        for key, value in dataclasses.asdict(config).items()
        if key not in RESULT_NEUTRAL_FIELDS
    }
    values["mixed_precision"] = precision_plan(config, device_type).effective
    values["metric_for_best_model"] = config.best_metric_name
    values["greater_is_better"] = config.best_metric_greater_is_better
    return json_ready(values)


def run_settings(
    config: TrainingConfig, run_config: Mapping[str, Any] | None, device_type: str | None = None
) -> dict[str, Any]:
    """What a checkpoint stores in ``run_config.json`` and resume compares."""
    return {
        "training": result_affecting_fields(config, device_type),
        "run_config": json_ready(dict(run_config or {})),
    }


def check_resume_settings(
    checkpoint: Path, config: TrainingConfig, current: Mapping[str, Any]
) -> None:
    """Refuse ``checkpoint`` when it was written with other result-affecting settings.

    ``max_steps`` may differ when the lr schedule does not depend on it (``constant``
    without ``warmup_ratio``): the steps already run are then those of the longer run.

    Raises:
        ValueError: ``"resume_from_checkpoint: checkpoint ... was written with a different
            configuration: learning_rate 0.001 -> 0.0005, ...; start a fresh run or resume
            with the same settings"``.
    """
    saved = _saved_settings(checkpoint)
    differences = []
    saved_training, training = saved.get("training", {}), current["training"]
    for key in training:
        if key not in saved_training:  # a field newer than the checkpoint: it had the default
            continue
        if key == "max_steps" and not config.schedule_depends_on_max_steps:
            continue
        if saved_training[key] != training[key]:
            differences.append(
                f"{key} {format_setting(saved_training[key])} -> {format_setting(training[key])}"
            )
    differences.extend(setting_differences(saved.get("run_config", {}), current["run_config"]))
    if differences:
        raise ValueError(
            f"resume_from_checkpoint: checkpoint {checkpoint} was written with a different "
            f"configuration: {', '.join(differences)}; start a fresh run or resume with the "
            "same settings"
        )


def _saved_settings(checkpoint: Path) -> dict[str, Any]:
    path = checkpoint / RUN_CONFIG_NAME
    if path.is_file():
        return read_json(path)
    # Written before run_config.json existed: compare what config.json holds.
    config = read_json(checkpoint / CONFIG_NAME)
    training = {k: v for k, v in config.items() if k not in RESULT_NEUTRAL_FIELDS}
    training.pop("mixed_precision", None)  # stored unresolved ("auto"): not comparable
    return {"training": training, "run_config": {}}


def json_ready(value: Any) -> Any:
    """``value`` as JSON would bring it back (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))
