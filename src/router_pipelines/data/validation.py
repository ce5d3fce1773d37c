"""Validation of raw records: every problem is reported as ``source:line: message``.

Reading is strict on purpose: bytes are decoded line by line as UTF-8 (no replacement
characters sneak into the corpus), each JSONL line must be one JSON object, and each record must
have the fields its mode needs (see :mod:`router_pipelines.data.formats`). The policy then either
stops the run (``error``, the default) before anything is written downstream, or drops the bad
records and logs them (``skip``).

Everything here streams: lines come from an open binary file, and a :class:`ScanCounts` keeps
counts plus only the first :data:`MAX_LISTED_PROBLEMS` problems, so a corpus larger than memory
is validated in constant memory.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from router_pipelines.data.formats import RecordError

logger = logging.getLogger(__name__)

MAX_LISTED_PROBLEMS = 20
BOM = b"\xef\xbb\xbf"


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


@dataclass
class ScanCounts:
    """Rows seen, valid examples, and the problems (all counted, the first few kept)."""

    seen: int = 0
    valid: int = 0
    n_problems: int = 0
    problems: list[Problem] = field(default_factory=list)  # the first MAX_LISTED_PROBLEMS

    def add(self, problem: Problem) -> None:
        self.n_problems += 1
        if len(self.problems) < MAX_LISTED_PROBLEMS:
            self.problems.append(problem)


def decode_lines(source: str, data: bytes | BinaryIO) -> Iterator[tuple[int, str | Problem]]:
    """Split bytes (or an open binary file, read lazily) into lines and decode each as UTF-8.

    Yields:
        ``(line_number, text)`` for each line (1-based, without the line ending), or
        ``(line_number, Problem)`` for a line that is not valid UTF-8.
    """
    lines: Iterable[bytes] = data.split(b"\n") if isinstance(data, bytes) else data
    number = 0
    pending: bytes | None = None  # hold one line back: a final empty piece is not a line
    for raw in lines:
        if pending is not None:
            number += 1
            yield number, _decode(source, number, pending)
        if number == 0 and pending is None and raw.startswith(BOM):
            raw = raw[len(BOM) :]  # a UTF-8 byte-order mark is not content
        pending = raw.removesuffix(b"\n")
    if pending is not None and (pending or not isinstance(data, bytes)):
        number += 1
        yield number, _decode(source, number, pending)


def _decode(source: str, number: int, raw: bytes) -> str | Problem:
    try:
        return raw.removesuffix(b"\r").decode("utf-8")
    except UnicodeDecodeError as err:
        return Problem(source, number, f"not valid UTF-8 at byte {err.start}")


def parse_json_lines(source: str, data: bytes | BinaryIO) -> Iterator[tuple[int, dict | Problem]]:
    """Parse JSONL bytes (or an open binary file) into objects; blank lines hold no record.

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


def validated_examples(
    source: str,
    rows: Iterable[tuple[int, Any]],
    to_example: Callable[[dict], dict],
    counts: ScanCounts,
) -> Iterator[dict]:
    """Apply ``to_example`` to each parsed row; yield the valid examples, count the rest.

    ``counts`` is updated as rows go by (``seen`` counts valid and invalid rows).
    """
    for number, row in rows:
        counts.seen += 1
        if isinstance(row, Problem):
            counts.add(row)
            continue
        try:
            example = to_example(row)
        except RecordError as err:
            counts.add(Problem(source, number, str(err)))
            continue
        counts.valid += 1
        yield example


def enforce_policy(source: str, counts: ScanCounts, policy: str) -> None:
    """Stop or log according to ``policy`` (``error`` | ``skip``) once a source is read.

    Raises:
        DataValidationError: the source held no rows; or ``policy == "error"`` and there are
            problems; or ``policy == "skip"`` and no valid record is left.
    """
    if counts.seen == 0:
        raise DataValidationError(f"{source}: file is empty (no records)")
    listed = format_problems(counts.problems, counts.n_problems)
    if counts.n_problems and policy == "error":
        raise DataValidationError(
            f"{source}: {counts.n_problems} invalid record(s) of {counts.seen}:\n"
            + listed
            + "\nFix them, or set data.on_invalid: skip to drop them."
        )
    if counts.n_problems:
        for problem in counts.problems:
            logger.warning("skipping %s", problem)
        logger.warning(
            "%s: skipped %d invalid record(s) of %d (on_invalid=skip)",
            source,
            counts.n_problems,
            counts.seen,
        )
    if counts.valid == 0:
        raise DataValidationError(
            f"{source}: no valid record left after skipping {counts.n_problems} of "
            f"{counts.seen}:\n" + listed
        )


def format_problems(problems: list[Problem], total: int | None = None) -> str:
    """The first :data:`MAX_LISTED_PROBLEMS` problems, one per line, then how many more.

    ``total`` is the number of problems when ``problems`` holds only the first few.
    """
    total = len(problems) if total is None else total
    lines = [f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS]]
    if total > MAX_LISTED_PROBLEMS:
        lines.append(f"  ... and {total - MAX_LISTED_PROBLEMS} more")
    return "\n".join(lines)
