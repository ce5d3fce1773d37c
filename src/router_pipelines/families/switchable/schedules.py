"""Which bit width(s) a switchable model trains at each optimizer step.

:class:`SwitchingConfig` names the strategy, :func:`bit_widths_for_step` answers for one step
(a pure function of the step, so a resumed run sees the same widths), and
:func:`lr_multiplier_fn` scales the learning rate by the width of the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router_pipelines.config import check_choice, check_int, check_optional_int, check_positive
from router_pipelines.models.quantization import check_precision

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
        check_int("switch_interval", self.switch_interval, minimum=1)
        check_int("seed", self.seed, minimum=0)
        if self.strategy == "progressive" and self.max_steps is None:
            raise ValueError(
                "max_steps: strategy 'progressive' needs it (the run length split into stages); "
                "expected an integer >= 1, got None"
            )
        check_optional_int("max_steps", self.max_steps, minimum=1)
        if self.bit_width_schedule is not None or self.strategy == "scheduled":
            schedule = _check_widths("bit_width_schedule", self.bit_width_schedule)
            outside = [b for b in schedule if b not in self.bit_widths]
            if outside:
                raise ValueError(
                    f"bit_width_schedule: width(s) {outside} are not in bit_widths "
                    f"{self.bit_widths}"
                )
            self.bit_width_schedule = schedule


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
    check_int("max_steps", max_steps, minimum=1)
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


def bits_metric(bits: int | None) -> float:
    """The ``bits`` training metric of a width (full precision reports :data:`FP_BITS_METRIC`)."""
    return FP_BITS_METRIC if bits is None else float(bits)


def _precision_rank(bits: int | None) -> float:
    return math.inf if bits is None else bits


def _check_widths(key: str, widths: Any) -> list[int | None]:
    if not isinstance(widths, list | tuple) or not widths:
        raise ValueError(f"{key}: expected a non-empty list of bit widths, got {widths!r}")
    return [check_precision(key, width) for width in widths]
