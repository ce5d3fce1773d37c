"""Typed configs built from Kedro parameter dicts, and the one set of value checks.

Every node turns its ``params:`` dicts into dataclasses with :func:`config_from_dict`, and the
project's ``before_pipeline_run`` hook (:mod:`router_pipelines.validation`) does the same for
every group a pipeline uses before its first node runs. So an unknown key, a value of the wrong
type or out of range stops the run before any work, with a message that names the full key
(``pretrain.training.max_steps``), the value and what is allowed.

Type checks come from the dataclass's annotations (``int``, ``float``, ``bool``, ``str``,
``X | None``, ``list``, ``dict``, ``tuple``, ``Literal``, nested dataclasses); range and
cross-field checks live in each dataclass's ``__post_init__`` and use the ``check_*`` helpers
below, whose messages start with the field name so that :func:`config_from_dict` can prefix
the group.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter that does not fit its config; the message names the full key."""


def config_from_dict(cls: type[T], values: Mapping[str, Any] | None, where: str) -> T:
    """Build dataclass ``cls`` from ``values``, rejecting keys it does not declare.

    Args:
        cls: a dataclass type; its ``__post_init__`` does value checks.
        values: the parameter dict (``None`` means all defaults).
        where: the parameter path shown in errors, e.g. ``"switchable.training"``.

    Nested dataclass fields are built recursively from nested dicts, each over the field's own
    default (so a partial group keeps the defaults its parent chose); every other field is
    checked against its annotation first (an int where an int is declared, ...), so a
    ``__post_init__`` only sees values of the declared type.

    Raises:
        ConfigError: naming ``where.key`` for an unknown key (with the closest known one), a
            missing required key, a value of the wrong type or one the dataclass rejects.
    """
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{where}: expected a mapping of settings, got {type(values).__name__} {values!r}"
        )
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(unknown_keys_message(where, unknown, fields))
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        key = f"{where}.{name}"
        nested = _dataclass_in(hints.get(name))
        if nested is not None and isinstance(value, Mapping):
            # A partial group overrides the field's own default (e.g. a RegisterConfig whose
            # default name is base_lm), not the nested class's defaults.
            value = config_from_dict(nested, {**_default_values(fields[name]), **value}, key)
        elif not (dataclasses.is_dataclass(value) and not isinstance(value, type)):
            value = check_type(key, value, hints.get(name, Any))
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as err:  # missing required field
        raise ConfigError(f"{where}: {err}") from err
    except ValueError as err:
        message = str(err)
        raise ConfigError(message if message.startswith(where) else f"{where}.{message}") from err


def _default_values(field: dataclasses.Field) -> dict[str, Any]:
    """The field's default dataclass instance as a dict of its own fields (top level only,
    so nested groups are merged again one level down); ``{}`` when it has none."""
    if field.default_factory is not dataclasses.MISSING:
        default = field.default_factory()
    elif field.default is not dataclasses.MISSING:
        default = field.default
    else:
        return {}
    if not dataclasses.is_dataclass(default):
        return {}
    return {f.name: getattr(default, f.name) for f in dataclasses.fields(default) if f.init}


def unknown_keys_message(where: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    """``"<where>: unknown key 'max_step' (did you mean 'max_steps'?); allowed keys: [...]"``."""
    known = sorted(known)
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        parts.append(f"{key!r}{hint}")
    noun = "key" if len(parts) == 1 else "keys"
    prefix = f"{where}: " if where else ""
    return f"{prefix}unknown {noun} {', '.join(parts)}; allowed keys are {known}"


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


def check_type(key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the annotation ``hint``; return it (ints widened to float).

    Unions pass when any member passes; generics are checked on their outer type
    (``list[int]`` needs a list, not its items: items are the dataclass's business). Unknown
    annotations pass unchecked.

    Raises:
        ConfigError: ``"<key>: expected <what>, got <value>"``.
    """
    if hint is Any or hint is None:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(hint)
        if value is None and type(None) in members:
            return None
        for member in members:
            if member is type(None):
                continue
            try:
                return check_type(key, value, member)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {value!r}")
    if origin is typing.Literal:
        allowed = list(typing.get_args(hint))
        check_choice(key, value, allowed)
        return value
    target = origin or hint
    if target is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if target is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if target is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if target is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if target in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return value
    if target in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return value
    return value


def _describe(hint: Any) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    members = [m for m in typing.get_args(hint) if m is not type(None)]
    parts = [names.get(typing.get_origin(m) or m, getattr(m, "__name__", str(m))) for m in members]
    if type(None) in typing.get_args(hint):
        parts.append("null")
    return " or ".join(parts)


def check_choice(key: str, value: Any, allowed: Iterable[Any]) -> None:
    """Raise ``ValueError("key: ...")`` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if isinstance(value, bool) and not any(isinstance(a, bool) for a in allowed):
        ok = False  # True == 1: a bool must not pass for an int choice
    else:
        try:
            ok = value in allowed
        except TypeError:  # unhashable value against a dict of choices
            ok = False
    if not ok:
        close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close and isinstance(value, str) else ""
        raise ValueError(f"{key}: {value!r} is not allowed{hint}; choose one of {allowed}")


def check_positive(key: str, value: Any, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError("key: ...")`` unless ``value`` is a positive number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key}: expected a number, got {value!r}")
    if value != value or value < 0 or (value == 0 and not allow_zero):  # value != value: NaN
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{key}: must be {bound}, got {value!r}")


def check_int(
    key: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
) -> None:
    """Raise ``ValueError("key: ...")`` unless ``value`` is an int (not a bool) in range."""
    bounds = (
        f" >= {minimum}"
        if minimum is not None and maximum is None
        else f" in [{minimum}, {maximum}]"
        if minimum is not None
        else f" <= {maximum}"
        if maximum is not None
        else ""
    )
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer{bounds}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{key}: must be an integer{bounds}, got {value!r}")


def check_optional_int(key: str, value: Any, *, minimum: int | None = None) -> None:
    """:func:`check_int`, or ``None``."""
    if value is not None:
        check_int(key, value, minimum=minimum)


def check_bool(key: str, value: Any) -> None:
    """Raise ``ValueError("key: ...")`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")


def check_fraction(key: str, value: Any, *, include_zero: bool = True) -> None:
    """Raise unless ``value`` is a number in ``[0, 1)`` (``(0, 1)`` without ``include_zero``)."""
    check_positive(key, value, allow_zero=include_zero)
    if value >= 1:
        low = "[0" if include_zero else "(0"
        raise ValueError(f"{key}: must be in {low}, 1), got {value!r}")


def check_non_empty_str(key: str, value: Any, *, optional: bool = False) -> None:
    """Raise unless ``value`` is a non-blank string (or ``None`` when ``optional``)."""
    if value is None and optional:
        return
    if not isinstance(value, str) or not value.strip():
        what = "a non-empty string or null" if optional else "a non-empty string"
        raise ValueError(f"{key}: expected {what}, got {value!r}")


def check_registry_version(key: str, value: Any) -> str:
    """A Model Registry version as a string: ``"latest"``, ``"@alias"`` or a version number.

    Numbers are accepted as ints (``registry_version=3`` on the command line) or strings.

    Raises:
        ValueError: anything else, naming ``key``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{key}: expected a version number, 'latest' or '@alias', got {value!r}")
    if isinstance(value, int) and value >= 1:
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "latest" or (text.startswith("@") and len(text) > 1) or text.isdigit():
            return text
    raise ValueError(f"{key}: expected a version number, 'latest' or '@alias', got {value!r}")


@dataclasses.dataclass
class RegisterConfig:
    """Whether and under which name a pipeline registers its model in the MLflow registry."""

    enabled: bool = True
    name: str = "model"  # MLflow Model Registry name, e.g. base_lm, switchable_lm
    description: str | None = None  # set on each new version

    def __post_init__(self) -> None:
        check_bool("enabled", self.enabled)
        check_non_empty_str("name", self.name)


def flatten_settings(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (empty mappings stay leaves)."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_settings(value, f"{name}."))
        else:
            flat[name] = value
    return flat


_ABSENT = object()


def setting_differences(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """``"key before -> after"`` for every nested leaf that differs (``<absent>`` when a side
    lacks it), sorted by key; values compared as JSON brings them back (tuples as lists)."""
    import json

    def comparable(values: Mapping[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(flatten_settings(values), default=str))

    old, new = comparable(before), comparable(after)
    differences = []
    for key in sorted(set(old) | set(new)):
        was, now = old.get(key, _ABSENT), new.get(key, _ABSENT)
        if was != now:
            differences.append(f"{key} {format_setting(was)} -> {format_setting(now)}")
    return differences


def format_setting(value: Any) -> str:
    """A setting's value as an error message shows it (strings bare, the rest as JSON)."""
    import json

    if value is _ABSENT:
        return "<absent>"
    return value if isinstance(value, str) and value else json.dumps(value)
