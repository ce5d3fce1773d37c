"""Typed configs built from Kedro parameter dicts.

Every node turns its ``params:`` dict into a dataclass at its top with
:func:`config_from_dict`, so an unknown key or a bad value stops the run before
any expensive work, with a message naming the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``values``, rejecting keys it does not declare.

    Args:
        cls: a dataclass type; its ``__post_init__`` does value checks.
        values: the parameter dict (``None`` means all defaults).
        where: the parameter path shown in errors, e.g. ``"switchable.training"``.

    Nested dataclass fields are built recursively from nested dicts.

    Raises:
        ValueError: naming ``where.key`` for an unknown key, a missing required key
            or a value the dataclass rejects.
    """
    values = dict(values or {})
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        nested = _dataclass_in(hints.get(name))
        if nested is not None and isinstance(value, Mapping):
            value = config_from_dict(nested, value, f"{where}.{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # missing required field
        raise ValueError(f"{where}: {err}") from err
    except ValueError as err:
        message = str(err)
        raise ValueError(message if message.startswith(where) else f"{where}.{message}") from err


def _dataclass_in(hint: Any) -> type | None:
    """The dataclass type in ``hint`` (``X`` or ``X | None``), else ``None``."""
    if hint is None:
        return None
    if dataclasses.is_dataclass(hint):
        return hint  # type: ignore[return-value]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg  # type: ignore[return-value]
    return None


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``ValueError("key: ...")`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{key}: {value!r} is not allowed; choose one of {allowed}")


def check_positive(key: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError("key: ...")`` unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{key}: must be {bound}, got {value!r}")
