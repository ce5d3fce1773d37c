"""A sweep over settings: the same quality, bits-per-byte and speed metrics for every family.

:func:`evaluate_settings` takes any :class:`~.settings.Setting` objects (bit configurations,
router budgets, capacities, thresholds) and returns one row per setting. :class:`SweepConfig`
is the generic part of a sweep's configuration; a family extends it by inheritance with the
fields that select its settings (and may narrow ``speed`` to a :class:`SpeedConfig` subclass).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from torch import nn
from torch.utils.data import Dataset

from router_pipelines.config import check_bool, check_int, check_optional_int
from router_pipelines.evaluation.language_modeling import (
    check_token_bytes,
    evaluate_language_model,
)
from router_pipelines.evaluation.settings import DEFAULT_SPEED_KIND, Setting, TimedModel
from router_pipelines.evaluation.speed import measure_throughput, model_max_positions

logger = logging.getLogger(__name__)

METRIC_COLUMNS = ("loss", "perplexity", "bits_per_byte", "token_accuracy", "eval_tokens")
SPEED_COLUMNS = ("tokens_per_s", "prefill_tokens_per_s", "speed_kind", "speed_dtype")
RESERVED_COLUMNS = ("name", "kind", *METRIC_COLUMNS, *SPEED_COLUMNS)


@dataclass
class SpeedConfig:
    """How throughput is measured for every setting."""

    enabled: bool = True  # False: speed columns are NaN, speed_kind "not_measured"
    decode_batch_size: int = 1  # tokens_per_s: batch-1 decoding is the memory-bound case
    decode_tokens: int = 32  # new tokens per decode run (KV cache)
    prefill_batch_size: int = 1  # prefill_tokens_per_s: one forward over the prompt
    prefill_seq_len: int = 128
    warmup: int = 2  # untimed iterations
    iters: int = 5  # timed iterations (the median is reported)

    def __post_init__(self) -> None:
        check_bool("enabled", self.enabled)
        for key in ("decode_batch_size", "decode_tokens", "prefill_batch_size", "prefill_seq_len"):
            check_int(key, getattr(self, key), minimum=1)
        check_int("warmup", self.warmup, minimum=0)
        check_int("iters", self.iters, minimum=1)


@dataclass
class SweepConfig:
    """How every setting of a sweep is evaluated (a family adds its setting-selection fields)."""

    batch_size: int = 8  # sequences per evaluation forward
    max_batches: int | None = None  # None: the whole evaluation set
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, minimum=1)
        check_optional_int("max_batches", self.max_batches, minimum=1)
        # The speed class is whatever the (possibly subclassed) field's default builds.
        speed_class = next(f for f in dataclasses.fields(self) if f.name == "speed").default_factory
        if isinstance(self.speed, dict):  # built directly rather than by config_from_dict
            self.speed = speed_class(**self.speed)
        if not isinstance(self.speed, speed_class):
            raise ValueError(
                f"speed: expected a {speed_class.__name__} or a mapping, got {self.speed!r}"
            )


def evaluate_settings(
    model: nn.Module,
    settings: Sequence[Setting],
    dataset: Dataset,
    config: SweepConfig,
    token_bytes: Any = None,
) -> pd.DataFrame:
    """Quality and speed of ``model`` in each of ``settings``, one row each.

    Every setting is validated (and ``token_bytes`` and the speed lengths checked) before the
    first is evaluated. Each is then applied, evaluated with
    :func:`~.language_modeling.evaluate_language_model`, described by its ``columns`` and
    timed with :func:`~.speed.measure_throughput` (on its ``timed_model`` if it has one), and
    undone: the model is left as it was.

    Args:
        model: the model the settings act on (``.config`` gives ``vocab_size`` and positions).
        settings: :class:`~.settings.Setting` objects with unique names.
        dataset: the evaluation set (see ``evaluate_language_model``).
        config: batch size, batch limit and speed settings.
        token_bytes: UTF-8 bytes per token id, for ``bits_per_byte`` (NaN without it).

    Returns:
        Columns ``name``, ``kind``, ``loss``, ``perplexity``, ``bits_per_byte``,
        ``token_accuracy``, ``eval_tokens``, ``tokens_per_s`` (decode),
        ``prefill_tokens_per_s``, ``speed_kind`` (``not_measured`` when speed is off),
        ``speed_dtype``, then the settings' own columns (NaN in rows of settings without them).

    Raises:
        ValueError: no settings, a duplicate name, an object that is not a setting, a setting
            the model cannot take (``settings['<name>']: ...``), bad ``token_bytes``, or a
            speed length past the model's positions.
    """
    _check_sweep(model, settings, config)
    token_bytes = check_token_bytes(token_bytes)
    rows = []
    for setting in settings:
        with setting.applied(model):
            metrics = evaluate_language_model(
                model,
                dataset,
                batch_size=config.batch_size,
                max_batches=config.max_batches,
                token_bytes=token_bytes,
            )
            columns = dict(setting.columns(model))
            speed = _measure_speed(model, setting, config.speed)
        clash = sorted(set(columns) & set(RESERVED_COLUMNS))
        if clash:
            raise ValueError(
                f"settings[{setting.name!r}]: columns {clash} are the sweep's own; rename them"
            )
        row: dict[str, Any] = {
            "name": setting.name,
            "kind": setting.kind,
            "loss": metrics["loss"],
            "perplexity": metrics["perplexity"],
            "bits_per_byte": metrics["bits_per_byte"],
            "token_accuracy": metrics["token_accuracy"],
            "eval_tokens": metrics["tokens"],
            **speed,
            **columns,  # last, so the column order does not depend on which setting is first
        }
        logger.info("evaluated %s: %s", setting.name, row)
        rows.append(row)
    return pd.DataFrame(rows)


def _check_sweep(model: nn.Module, settings: Sequence[Setting], config: SweepConfig) -> None:
    if not isinstance(config, SweepConfig):
        raise TypeError(f"config: expected a SweepConfig, got {type(config).__name__}")
    if isinstance(settings, Setting) or not isinstance(settings, Sequence) or not settings:
        raise ValueError("settings: expected a non-empty list of Setting objects")
    names = []
    for index, setting in enumerate(settings):
        if not isinstance(setting, Setting):
            raise TypeError(
                f"settings[{index}]: {type(setting).__name__} is not a Setting (needs name, kind, "
                "validate, applied and columns)"
            )
        if not isinstance(setting.name, str) or not setting.name:
            raise ValueError(f"settings[{index}]: name must be a non-empty string")
        names.append(setting.name)
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"settings: names {duplicates} appear more than once")
    speed = config.speed
    max_positions = model_max_positions(model)
    for key in ("decode_tokens", "prefill_seq_len"):
        if speed.enabled and max_positions is not None and getattr(speed, key) > max_positions:
            raise ValueError(
                f"speed.{key}: {getattr(speed, key)} exceeds the model's {max_positions} positions"
            )
    for setting in settings:
        try:
            setting.validate(model)
        except ValueError as err:
            raise ValueError(f"settings[{setting.name!r}]: {err}") from err


def _measure_speed(model: nn.Module, setting: Setting, speed: SpeedConfig) -> dict[str, Any]:
    """Decode and prefill tokens/s, which kind of model produced them, and its matmul dtype."""
    if not speed.enabled:
        return {
            "tokens_per_s": math.nan,
            "prefill_tokens_per_s": math.nan,
            "speed_kind": "not_measured",
            "speed_dtype": "",
        }
    timed_model = getattr(setting, "timed_model", None)
    timed = timed_model(model) if timed_model is not None else None
    if timed is None:
        timed = TimedModel(model, getattr(setting, "speed_kind", DEFAULT_SPEED_KIND))
    common = {"warmup": speed.warmup, "iters": speed.iters}
    vocab_size = _vocab_size(model)
    decode = measure_throughput(
        timed.model, vocab_size, speed.decode_batch_size, speed.decode_tokens, "decode", **common
    )
    prefill = measure_throughput(
        timed.model,
        vocab_size,
        speed.prefill_batch_size,
        speed.prefill_seq_len,
        "prefill",
        **common,
    )
    return {
        "tokens_per_s": decode["tokens_per_s"],
        "prefill_tokens_per_s": prefill["tokens_per_s"],
        "speed_kind": timed.speed_kind,
        "speed_dtype": timed.speed_dtype or _float_dtype(timed.model),
    }


def _vocab_size(model: nn.Module) -> int:
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab_size is None:
        raise ValueError(f"model: {type(model).__name__} has no config.vocab_size to draw ids from")
    return vocab_size


def _float_dtype(model: nn.Module) -> str:
    """The dtype of the first floating-point parameter (or buffer), e.g. ``"float32"``."""
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        if tensor.is_floating_point():
            return str(tensor.dtype).removeprefix("torch.")
    return ""
