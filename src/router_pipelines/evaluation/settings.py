"""What a sweep evaluates: a :class:`Setting` puts a model in one operating point.

Every family that trades quality for cost has settings: a bit configuration of a switchable
model, a router at a target budget, a token-routing capacity, a query-router threshold. A
family writes one small class per kind in its own module; :func:`~.sweep.evaluate_settings`
evaluates any list of them with the same metrics, so nothing here knows a family.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import nn

DEFAULT_SPEED_KIND = "native"  # the model is timed as set (no kernel substitution)


@runtime_checkable
class Setting(Protocol):
    """One operating point of a model.

    Required:

    - ``name``: unique within a sweep (the row's ``name``); ``kind``: its family of settings,
      e.g. ``"uniform"``, ``"layer_wise"``, ``"budget"``.
    - ``validate(model)``: raise ``ValueError`` if the setting cannot be applied to ``model``;
      called for every setting before the first is evaluated, and must not change ``model``.
    - ``applied(model)``: a context manager that puts ``model`` in the setting and restores
      what it changed on exit (also on an exception).
    - ``columns(model)``: the setting's cost and description columns for its row (e.g.
      ``effective_bits``, ``target_budget``), called inside ``applied`` after the quality
      metrics were computed, so a setting may report what it observed during them.

    Optional (looked up with ``getattr``):

    - ``speed_kind``: a string naming what the timing measures (default ``"native"``;
      ``"simulated"`` for an emulation whose speed says nothing about a deployment).
    - ``timed_model(model) -> TimedModel | None``: a different model to time (e.g. a packed
      int8 copy), called inside ``applied``; ``None`` times ``model`` as set.
    """

    name: str
    kind: str

    def validate(self, model: nn.Module) -> None: ...

    def applied(self, model: nn.Module) -> AbstractContextManager[Any]: ...

    def columns(self, model: nn.Module) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class TimedModel:
    """The model a setting is timed on, and what that timing is."""

    model: nn.Module
    speed_kind: str  # e.g. "packed_int8": real low-bit kernels
    speed_dtype: str | None = None  # matmul dtype; None: the model's floating parameter dtype


@dataclass(frozen=True)
class ModelAsIs:
    """The model exactly as it is: a baseline row, or the one setting of a plain causal LM."""

    name: str = "model"
    kind: str = "as_is"

    def validate(self, model: nn.Module) -> None:
        del model

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        del model
        yield

    def columns(self, model: nn.Module) -> dict[str, Any]:
        del model
        return {}
