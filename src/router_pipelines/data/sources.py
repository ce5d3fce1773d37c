"""Read raw records from local files or hub datasets into a validated DataFrame.

The result has one row per example: a ``text`` column (plus ``url``/``timestamp`` when present)
in pretraining mode, or a ``messages`` column (lists of ``{role, content}``) in instruction mode.
``frame.attrs["ingest"]`` records where it came from and how many rows were read and skipped.

Local formats (``data.format``; ``auto`` picks by suffix):

* ``jsonl`` / ``chat_jsonl`` (``.jsonl``): one JSON object per line; the record shape (text or
  one of the chat formats) is recognised per record, so both names use the same reader.
* ``parquet`` (``.parquet``): one record per row; problems are reported by 1-based row number.
* ``text`` (``.txt``): one document per block of lines separated by blank lines (paragraph
  blocks keep multi-line documents together, unlike one document per line); a document's
  line number is its first line.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from router_pipelines.data.config import DataConfig
from router_pipelines.data.formats import to_chat_example, to_text_example
from router_pipelines.data.validation import (
    DataValidationError,
    Problem,
    convert_records,
    decode_lines,
    enforce_policy,
    parse_json_lines,
)

logger = logging.getLogger(__name__)

SUFFIX_FORMATS = {".jsonl": "jsonl", ".parquet": "parquet", ".txt": "text"}


@dataclass(frozen=True)
class HubSpec:
    """Everything ``datasets.load_dataset`` needs for one hub dataset."""

    path: str
    subset: str | None
    split: str
    streaming: bool
    text_field: str | list[str]
    skip_empty: bool = False  # empty rows are part of the dataset's layout, not errors


# The calibration/evaluation sets named in seed 000. WikiText stores blank lines between
# paragraphs as empty rows, so those are dropped silently instead of failing validation.
HUB_PRESETS = {
    "c4": HubSpec("allenai/c4", "en", "train", True, "text"),
    "wikitext2": HubSpec(
        "Salesforce/wikitext", "wikitext-2-raw-v1", "train", False, "text", skip_empty=True
    ),
    "ptb": HubSpec("ptb-text-only/ptb_text_only", "penn_treebank", "train", False, "sentence"),
    "pileval": HubSpec("mit-han-lab/pile-val-backup", None, "validation", False, "text"),
}


def read_records(path: str | Path, cfg: DataConfig) -> pd.DataFrame:
    """Read and validate a local file of records.

    Args:
        path: a ``.jsonl``, ``.parquet`` or ``.txt`` file (or any file with ``cfg.format`` set).
        cfg: format, mode, text fields and the ``on_invalid`` policy.

    Returns:
        One row per valid example (see the module docstring for the columns).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        DataValidationError: malformed records (policy ``error``), an empty file, or nothing
            left after skipping.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"raw data file {str(path)!r} {what}")
    fmt = cfg.format if cfg.format != "auto" else _format_from_suffix(path)
    if fmt == "text" and cfg.mode == "instruction":
        raise ValueError(
            f"{path}: plain-text files cannot feed mode 'instruction'; use chat JSONL or parquet"
        )
    source = str(path)
    if fmt in ("jsonl", "chat_jsonl"):
        rows: Any = parse_json_lines(source, path.read_bytes())
    elif fmt == "parquet":
        rows = _parquet_rows(path)
    else:
        rows = _text_blocks(source, path.read_bytes())
    return _validated_frame(source, rows, cfg.mode, cfg.text_fields, cfg.on_invalid)


def resolve_hub_dataset(
    name: str,
    *,
    subset: str | None = None,
    split: str | None = None,
    streaming: bool | None = None,
    text_field: str | list[str] = "text",
) -> HubSpec:
    """Resolve a preset name (``c4``, ``wikitext2``, ``ptb``, ``pileval``) or any hub id.

    Explicit arguments override the preset; ``text_field="text"`` (the default) takes the
    preset's field (``sentence`` for ptb). Unknown names pass through unchanged, which also
    lets ``datasets`` read a local folder of JSON/parquet files.
    """
    preset = HUB_PRESETS.get(name)
    if preset is None:
        return HubSpec(name, subset, split or "train", bool(streaming), text_field)
    return HubSpec(
        path=preset.path,
        subset=subset if subset is not None else preset.subset,
        split=split or preset.split,
        streaming=preset.streaming if streaming is None else streaming,
        text_field=preset.text_field if text_field == "text" else text_field,
        skip_empty=preset.skip_empty,
    )


def load_hub_records(cfg: DataConfig) -> pd.DataFrame:
    """Load ``cfg.hub_dataset`` through ``datasets.load_dataset`` and validate its rows.

    Streaming datasets (c4 by default) read only the first ``cfg.max_records`` rows; others are
    read whole and subsampled later like local files.

    Raises:
        ValueError: a streamed dataset without ``max_records``.
        DataValidationError: as :func:`read_records`, with ``path[subset/split]:row`` locations.
    """
    import datasets  # deferred: importing `datasets` costs ~1 s and local runs never need it

    if cfg.hub_dataset is None:
        raise ValueError("hub_dataset: not set; use read_records for local files")
    spec = resolve_hub_dataset(
        cfg.hub_dataset,
        subset=cfg.hub_subset,
        split=cfg.hub_split,
        streaming=cfg.streaming,
        text_field=cfg.text_field,
    )
    if spec.streaming and cfg.max_records is None:
        raise ValueError(
            f"max_records: required when streaming hub dataset {spec.path!r} "
            "(a stream has no end to sample from); set data.max_records"
        )
    kwargs: dict[str, Any] = {
        "name": spec.subset,
        "split": spec.split,
        "streaming": spec.streaming,
    }
    if cfg.hub_trust_remote_code:
        # Only older `datasets` releases run loading scripts with this flag; since 4.0 it is
        # ignored (with a logged error) and script datasets such as ptb_text_only are read
        # from the hub's Parquet export instead.
        kwargs["trust_remote_code"] = True
    logger.info("loading hub dataset %s (%s)", spec.path, kwargs)
    dataset = datasets.load_dataset(spec.path, **kwargs)
    source = f"{spec.path}[{spec.subset or 'default'}/{spec.split}]"
    rows: Any = enumerate(dataset, start=1)
    if spec.streaming:
        rows = itertools.islice(rows, cfg.max_records)
    fields = [spec.text_field] if isinstance(spec.text_field, str) else spec.text_field
    if spec.skip_empty:
        rows = ((n, row) for n, row in rows if not _all_blank(row, fields))
    return _validated_frame(source, rows, cfg.mode, fields, cfg.on_invalid)


def _validated_frame(
    source: str, rows: Any, mode: str, fields: list[str], policy: str
) -> pd.DataFrame:
    convert = to_chat_example if mode == "instruction" else to_text_example
    examples, problems, seen = convert_records(
        source, rows, functools.partial(convert, text_fields=fields)
    )
    enforce_policy(source, problems, len(examples), seen, policy)
    frame = pd.DataFrame(examples)
    frame.attrs["ingest"] = {
        "source": source,
        "records_read": seen,
        "records_skipped": len(problems),
    }
    logger.info("%s: %d valid records of %d", source, len(examples), seen)
    return frame


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
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataValidationError(f"{path}: not a readable parquet file ({err})") from err
    return enumerate(table.to_pylist(), start=1)


def _text_blocks(source: str, data: bytes) -> Iterator[tuple[int, dict | Problem]]:
    """Paragraph blocks of a text file; a block with an undecodable line is one problem."""
    lines: list[str] = []
    start: int | None = None
    bad: Problem | None = None
    for number, line in itertools.chain(decode_lines(source, data), [(0, "")]):
        if isinstance(line, Problem) or line.strip():
            start = start or number
            if isinstance(line, Problem):
                bad = bad or line
            else:
                lines.append(line)
            continue
        if start is not None:  # a blank line (or the end) closes the current block
            yield (bad.line, bad) if bad else (start, {"text": "\n".join(lines)})
        lines, start, bad = [], None, None


def _all_blank(row: dict, fields: list[str]) -> bool:
    values = [row.get(name) for name in fields]
    return all(isinstance(value, str) and not value.strip() for value in values)
