"""Validation of raw records: every problem is reported as ``source:line: message``.

Reading is strict on purpose: bytes are decoded line by line as UTF-8 (no replacement
characters sneak into the corpus), each JSONL line must be one JSON object, and each record must
have the fields its mode needs (see :mod:`router_pipelines.data.formats`). The policy then either
stops the run (``error``, the default) before anything is written downstream, or drops the bad
records and logs them (``skip``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from router_pipelines.data.formats import RecordError

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20


class DataValidationError(ValueError):
    """Raw data is missing or malformed; the message lists where and why."""


@dataclass(frozen=True)
class Problem:
    """One malformed record: where it is (1-based line or row) and what is wrong."""

    source: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if self.line is None:
            return f"{self.source}: {self.message}"
        return f"{self.source}:{self.line}: {self.message}"


def decode_lines(source: str, data: bytes) -> Iterator[tuple[int, str | Problem]]:
    """Split ``data`` into lines and decode each strictly as UTF-8.

    Yields:
        ``(line_number, text)`` for each line (1-based, without the line ending), or
        ``(line_number, Problem)`` for a line that is not valid UTF-8.
    """
    if data.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not content
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    for number, raw in enumerate(lines, start=1):
        try:
            yield number, raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError as err:
            yield number, Problem(source, number, f"not valid UTF-8 at byte {err.start}")


def parse_json_lines(source: str, data: bytes) -> Iterator[tuple[int, dict | Problem]]:
    """Parse JSONL bytes into objects; blank lines are ignored (they hold no record).

    Yields:
        ``(line_number, object)`` or ``(line_number, Problem)`` for invalid JSON or a value
        that is not a JSON object.
    """
    for number, line in decode_lines(source, data):
        if isinstance(line, Problem):
            yield number, line
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            yield number, Problem(source, number, f"invalid JSON: {err.msg} (column {err.colno})")
            continue
        if not isinstance(obj, dict):
            yield (
                number,
                Problem(source, number, f"expected a JSON object, got {type(obj).__name__}"),
            )
            continue
        yield number, obj


def convert_records(
    source: str,
    rows: Iterable[tuple[int, Any]],
    to_example: Callable[[dict], dict],
) -> tuple[list[dict], list[Problem], int]:
    """Apply ``to_example`` to each parsed row, collecting problems instead of stopping.

    Returns:
        ``(examples, problems, rows_seen)``; ``rows_seen`` counts valid and invalid rows.
    """
    examples: list[dict] = []
    problems: list[Problem] = []
    seen = 0
    for number, row in rows:
        seen += 1
        if isinstance(row, Problem):
            problems.append(row)
            continue
        try:
            examples.append(to_example(row))
        except RecordError as err:
            problems.append(Problem(source, number, str(err)))
    return examples, problems, seen


def enforce_policy(
    source: str, problems: list[Problem], n_valid: int, rows_seen: int, policy: str
) -> None:
    """Stop or log according to ``policy`` (``error`` | ``skip``).

    Raises:
        DataValidationError: the source held no rows; or ``policy == "error"`` and there are
            problems; or ``policy == "skip"`` and no valid record is left.
    """
    if rows_seen == 0:
        raise DataValidationError(f"{source}: file is empty (no records)")
    if problems and policy == "error":
        raise DataValidationError(
            f"{source}: {len(problems)} invalid record(s) of {rows_seen}:\n"
            + format_problems(problems)
            + "\nFix them, or set data.on_invalid: skip to drop them."
        )
    if problems:
        for problem in problems[:MAX_LISTED_PROBLEMS]:
            logger.warning("skipping %s", problem)
        logger.warning(
            "%s: skipped %d invalid record(s) of %d (on_invalid=skip)",
            source,
            len(problems),
            rows_seen,
        )
    if n_valid == 0:
        raise DataValidationError(
            f"{source}: no valid record left after skipping {len(problems)} of {rows_seen}:\n"
            + format_problems(problems)
        )


def format_problems(problems: list[Problem]) -> str:
    """The first :data:`MAX_LISTED_PROBLEMS` problems, one per line, then how many more."""
    lines = [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if len(problems) > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {len(problems) - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)
