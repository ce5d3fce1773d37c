"""Turn one raw record into a training example: plain text or a normalised chat.

Supported record shapes (the chat formats of seed 002):

* ``{"text": "..."}`` (C4 schema; optional string ``url`` and ``timestamp`` are kept);
* ``{"messages": [{"role": "user", "content": "..."}, ...]}``;
* ``{"conversations": [{"from": "human", "value": "..."}, ...]}`` (ShareGPT);
* ``{"prompt": "...", "response": "..."}``;
* a list of text fields, e.g. ``["instruction", "input", "output"]``: in pretraining mode the
  non-empty fields are joined with newlines; in instruction mode the last field is the
  assistant reply and the others, joined, are the user turn.

Every chat is normalised to ``messages``. A malformed record raises :class:`RecordError` whose
message names the field; the reader adds the file and line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
}
OPTIONAL_STRING_FIELDS = ("url", "timestamp")  # C4 metadata, kept when present


class RecordError(ValueError):
    """One record is malformed; the message says which field and why (no location)."""


def to_text_example(obj: Mapping[str, Any], text_fields: Sequence[str]) -> dict[str, str]:
    """A pretraining example ``{"text": ..., ["url", "timestamp"]}`` from one raw record.

    Uses ``text_fields`` when the record has them; a record without them but with chat fields
    is flattened (message contents joined by newlines).

    Raises:
        RecordError: missing field, wrong type, or empty text.
    """
    if any(name in obj for name in text_fields) or not _has_chat_fields(obj):
        text = _join_fields(obj, text_fields)
    else:
        text = "\n".join(m["content"] for m in to_messages(obj, text_fields))
    example = {"text": text}
    for name in OPTIONAL_STRING_FIELDS:
        value = obj.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise RecordError(f"field {name!r} must be a string, got {_type_name(value)}")
            example[name] = value
    return example


def to_chat_example(obj: Mapping[str, Any], text_fields: Sequence[str]) -> dict[str, list]:
    """An instruction example ``{"messages": [{"role", "content"}, ...]}`` from one raw record.

    Raises:
        RecordError: no recognised chat shape, wrong types, empty turns, unknown roles,
            or no assistant turn to learn from.
    """
    return {"messages": to_messages(obj, text_fields)}


def to_messages(obj: Mapping[str, Any], text_fields: Sequence[str]) -> list[dict[str, str]]:
    """Normalise any supported chat shape of ``obj`` to a list of ``{role, content}``."""
    if len(text_fields) >= 2:
        messages = _fields_to_messages(obj, text_fields)
    elif text_fields[0] not in ("text", "messages", "conversations") and text_fields[0] in obj:
        messages = _parse_turns(obj[text_fields[0]], text_fields[0])
    elif "messages" in obj:
        messages = _parse_turns(obj["messages"], "messages")
    elif "conversations" in obj:
        messages = _parse_turns(obj["conversations"], "conversations")
    elif "prompt" in obj or "response" in obj:
        messages = [
            {"role": "user", "content": _string(obj, "prompt")},
            {"role": "assistant", "content": _string(obj, "response")},
        ]
    else:
        raise RecordError(
            "no chat fields: expected 'messages', 'conversations', 'prompt'/'response' "
            f"or the text_field list, got keys {sorted(obj)}"
        )
    if not any(m["role"] == "assistant" for m in messages):
        raise RecordError("chat has no assistant message to learn from")
    return messages


def messages_to_text(messages: Sequence[Mapping[str, str]]) -> str:
    """The contents of a chat joined by newlines (what a BPE tokenizer is trained on)."""
    return "\n".join(m["content"] for m in messages)


def _has_chat_fields(obj: Mapping[str, Any]) -> bool:
    return any(key in obj for key in ("messages", "conversations", "prompt", "response"))


def _join_fields(obj: Mapping[str, Any], fields: Sequence[str]) -> str:
    if len(fields) == 1:
        return _string(obj, fields[0])
    parts = [_string(obj, name, allow_empty=True) for name in fields]
    text = "\n".join(part for part in parts if part.strip())
    if not text:
        raise RecordError(f"fields {list(fields)} are all empty")
    return text


def _fields_to_messages(obj: Mapping[str, Any], fields: Sequence[str]) -> list[dict[str, str]]:
    user_parts = [_string(obj, name, allow_empty=True) for name in fields[:-1]]
    user = "\n".join(part for part in user_parts if part.strip())
    if not user:
        raise RecordError(f"fields {list(fields[:-1])} (the user turn) are all empty")
    return [
        {"role": "user", "content": user},
        {"role": "assistant", "content": _string(obj, fields[-1])},
    ]


def _parse_turns(turns: Any, field: str) -> list[dict[str, str]]:
    """Parse a ``messages`` list or a ShareGPT ``conversations`` list (detected per turn)."""
    if not isinstance(turns, list):
        raise RecordError(f"field {field!r} must be a list of turns, got {_type_name(turns)}")
    if not turns:
        raise RecordError(f"field {field!r} is an empty list")
    messages = []
    for number, turn in enumerate(turns, start=1):
        where = f"{field}[{number}]"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} must be an object, got {_type_name(turn)}")
        if "from" in turn and "role" not in turn:
            speaker = _string(turn, "from", where=where)
            if speaker not in SHAREGPT_ROLES:
                raise RecordError(
                    f"{where} has unknown 'from' {speaker!r}; expected one of "
                    f"{sorted(SHAREGPT_ROLES)}"
                )
            role, content = SHAREGPT_ROLES[speaker], _string(turn, "value", where=where)
        else:
            role = _string(turn, "role", where=where)
            if role not in ROLES:
                raise RecordError(f"{where} has unknown role {role!r}; expected one of {ROLES}")
            content = _string(turn, "content", where=where)
        messages.append({"role": role, "content": content})
    return messages


def _string(
    obj: Mapping[str, Any], name: str, *, allow_empty: bool = False, where: str = ""
) -> str:
    label = f"{where} field {name!r}" if where else f"field {name!r}"
    if name not in obj:
        raise RecordError(f"missing {label}")
    value = obj[name]
    if not isinstance(value, str):
        raise RecordError(f"{label} must be a string, got {_type_name(value)}")
    if not allow_empty and not value.strip():
        raise RecordError(f"{label} is empty")
    return value


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__
