"""Stream raw records from local files: validate, count and fingerprint them in bounded memory.

The corpus is never held in memory. :func:`scan_corpus` reads the file once (pass 1): it
validates every record, counts the valid ones and hashes the bytes, and returns a small
:class:`CorpusSource` descriptor. Later passes (:func:`iter_examples`) read the file again and
yield the valid examples in source order, numbered ``0 .. records - 1``; the subsample and the
split are chosen on those numbers (:mod:`router_pipelines.data.sampling`).

Local formats (``data.format``; ``auto`` picks by suffix):

* ``jsonl`` / ``chat_jsonl`` (``.jsonl``): one JSON object per line; the record shape (text or
  one of the chat formats) is recognised per record, so both names use the same reader.
* ``parquet`` (``.parquet``): one record per row, read in batches; problems are reported by
  1-based row number.
* ``text`` (``.txt``): one document per block of lines separated by blank lines (paragraph
  blocks keep multi-line documents together, unlike one document per line); a document's
  line number is its first line.

An example is ``{"text": ...}`` (plus ``url``/``timestamp`` when present) in pretraining mode,
or ``{"messages": [{role, content}, ...]}`` in instruction mode.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import pandas as pd

from router_pipelines.storage import digest_path
from router_pipelines.data.config import DataConfig
from router_pipelines.data.formats import to_chat_example, to_text_example
from router_pipelines.data.validation import (
    DataValidationError,
    Problem,
    ScanCounts,
    decode_lines,
    enforce_policy,
    parse_json_lines,
    validated_examples,
)

logger = logging.getLogger(__name__)

SUFFIX_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text"}
PARQUET_BATCH_ROWS = 1024  # rows decoded at a time: bounds memory on files of long documents


@dataclass(frozen=True)
class CorpusSource:
    """A validated corpus file: where it is, how to read it, and what pass 1 found in it.

    ``records`` counts the valid examples; later passes number them ``0 .. records - 1``.
    """

    path: str  # the file read (for a hub dataset: its local staging JSONL)
    source: str  # the name used in messages and reports (the path, or ``hub[subset/split]``)
    format: str  # jsonl | parquet | text (``auto`` and ``chat_jsonl`` resolved)
    mode: str  # pretraining | instruction
    text_fields: tuple[str, ...]
    on_invalid: str
    records: int  # valid examples
    records_read: int  # rows seen, valid or not
    records_skipped: int
    n_bytes: int  # size of the file read
    sha256: str  # of the file's bytes
    seconds: float  # pass 1 wall time
    hub: dict[str, Any] | None = None  # the resolved hub spec when the corpus came from a hub

    @property
    def mb_per_s(self) -> float:
        """Pass 1 throughput in MB (10^6 bytes) per second."""
        return self.n_bytes / max(self.seconds, 1e-9) / 1e6


def scan_corpus(
    path: str | Path,
    cfg: DataConfig,
    *,
    source: str | None = None,
    text_fields: Iterable[str] | None = None,
    fmt: str | None = None,
    hub: dict[str, Any] | None = None,
) -> CorpusSource:
    """Pass 1: validate every record of ``path``, count the valid ones and hash the file.

    Args:
        path: a ``.jsonl``, ``.parquet`` or ``.txt`` file (or any file with ``cfg.format`` set).
        cfg: format, mode, text fields and the ``on_invalid`` policy.
        source: the name shown in messages (default: ``path``).
        text_fields: override ``cfg.text_fields`` (a hub preset's field).
        fmt: override the format (a hub staging file is JSONL whatever ``cfg.format`` says).
        hub: the hub spec to record in the descriptor.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataValidationError: malformed records (policy ``error``), an empty file, or nothing
            left after skipping.
    """
    started = time.perf_counter()
    path = _existing_file(path)
    fmt = fmt or _resolve_format(path, cfg)
    source = source or str(path)
    fields = tuple(text_fields or cfg.text_fields)
    counts = ScanCounts()
    digest = hashlib.sha256()
    for _ in _examples(path, fmt, source, cfg.mode, fields, counts, digest):
        pass
    enforce_policy(source, counts, cfg.on_invalid)
    corpus = CorpusSource(
        path=str(path),
        source=source,
        format=fmt,
        mode=cfg.mode,
        text_fields=fields,
        on_invalid=cfg.on_invalid,
        records=counts.valid,
        records_read=counts.seen,
        records_skipped=counts.n_problems,
        n_bytes=path.stat().st_size,
        sha256=digest_path(path) if fmt == "parquet" else digest.hexdigest(),
        seconds=time.perf_counter() - started,
        hub=hub,
    )
    logger.info(
        "%s: %d valid records of %d (%.1f MB at %.1f MB/s)",
        source,
        corpus.records,
        corpus.records_read,
        corpus.n_bytes / 1e6,
        corpus.mb_per_s,
    )
    return corpus


def iter_examples(corpus: CorpusSource) -> Iterator[dict]:
    """Pass 2+: the valid examples of ``corpus`` in source order (problems were logged in pass 1).

    Raises:
        DataValidationError: once exhausted, if the file no longer holds what pass 1 found
            (another number of valid records, or other bytes).
    """
    counts = ScanCounts()
    digest = None if corpus.format == "parquet" else hashlib.sha256()
    path = _existing_file(corpus.path)
    fields = corpus.text_fields
    yield from _examples(path, corpus.format, corpus.source, corpus.mode, fields, counts, digest)
    changed = counts.valid != corpus.records or (
        digest is not None and digest.hexdigest() != corpus.sha256
    )
    if changed:
        raise DataValidationError(
            f"{corpus.source}: changed since it was first read ({counts.valid} valid records "
            f"now, {corpus.records} before); run the pipeline again"
        )


def read_records(
    path: str | Path,
    cfg: DataConfig,
    *,
    source: str | None = None,
    text_fields: Iterable[str] | None = None,
    fmt: str | None = None,
) -> pd.DataFrame:
    """Read and validate a small local file into a DataFrame (tests, notebooks, small corpora).

    The pipeline itself never builds this frame: it streams through :func:`scan_corpus` and
    :func:`iter_examples`, which share this validation. ``frame.attrs["ingest"]`` holds the
    source and the read/skipped counts. The keyword arguments are those of :func:`scan_corpus`.

    Raises:
        FileNotFoundError, DataValidationError: as :func:`scan_corpus`.
    """
    path = _existing_file(path)
    fmt = fmt or _resolve_format(path, cfg)
    source = source or str(path)
    fields = tuple(text_fields or cfg.text_fields)
    counts = ScanCounts()
    examples = list(_examples(path, fmt, source, cfg.mode, fields, counts))
    enforce_policy(source, counts, cfg.on_invalid)
    return records_frame(examples, source, counts)


def records_frame(examples: list[dict], source: str, counts: ScanCounts) -> pd.DataFrame:
    """A DataFrame of ``examples`` with ``attrs["ingest"]`` set from ``counts``."""
    frame = pd.DataFrame(examples)
    frame.attrs["ingest"] = {
        "source": source,
        "records_read": counts.seen,
        "records_skipped": counts.n_problems,
    }
    return frame


def _examples(
    path: Path,
    fmt: str,
    source: str,
    mode: str,
    fields: tuple[str, ...],
    counts: ScanCounts,
    digest: Any = None,
) -> Iterator[dict]:
    if fmt == "text" and mode == "instruction":
        raise ValueError(
            f"{path}: plain-text files cannot feed mode 'instruction'; use chat JSONL or parquet"
        )
    convert = to_chat_example if mode == "instruction" else to_text_example
    to_example = functools.partial(convert, text_fields=list(fields))
    if fmt == "parquet":
        yield from validated_examples(source, _parquet_rows(path), to_example, counts)
        return
    with path.open("rb") as handle:
        lines = _hashed(handle, digest) if digest is not None else handle
        if fmt in ("jsonl", "chat_jsonl"):
            rows: Iterable[tuple[int, Any]] = parse_json_lines(source, lines)
        else:
            rows = _text_blocks(decode_lines(source, lines))
        yield from validated_examples(source, rows, to_example, counts)


def _hashed(handle: BinaryIO, digest: Any) -> Iterator[bytes]:
    for line in handle:
        digest.update(line)
        yield line


def _existing_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"raw data file {str(path)!r} {what} (data.raw_path)")
    return path


def _resolve_format(path: Path, cfg: DataConfig) -> str:
    fmt = cfg.format if cfg.format != "auto" else _format_from_suffix(path)
    if fmt == "text" and cfg.mode == "instruction":
        raise ValueError(
            f"{path}: plain-text files cannot feed mode 'instruction'; use chat JSONL or parquet"
        )
    return "jsonl" if fmt == "chat_jsonl" else fmt


def _format_from_suffix(path: Path) -> str:
    try:
        return SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"format: cannot infer the format of {str(path)!r} from suffix {path.suffix!r} "
            f"(known: {sorted(SUFFIX_FORMATS)}); set data.format"
        ) from None


def _parquet_rows(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataValidationError(f"{path}: not a readable parquet file ({err})") from err
    numbers = itertools.count(1)
    for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            yield next(numbers), row


def _text_blocks(
    lines: Iterable[tuple[int, str | Problem]],
) -> Iterator[tuple[int, dict | Problem]]:
    """Paragraph blocks of a text file; a block with an undecodable line is one problem."""
    block: list[str] = []
    start: int | None = None
    bad: Problem | None = None
    for number, line in itertools.chain(lines, [(0, "")]):
        if isinstance(line, Problem) or line.strip():
            start = start or number
            if isinstance(line, Problem):
                bad = bad or line
            else:
                block.append(line)
            continue
        if start is not None:  # a blank line (or the end) closes the current block
            yield (bad.line, bad) if bad else (start, {"text": "\n".join(block)})
        block, start, bad = [], None, None
