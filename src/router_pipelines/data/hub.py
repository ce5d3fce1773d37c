"""Hub datasets (``datasets.load_dataset``): presets, and a spill to a local JSONL file.

A hub dataset is read once, row by row, into a staging JSONL file (``<cache_dir>/staging/``),
then handled exactly like a local file (:func:`~router_pipelines.data.sources.scan_corpus`):
a streamed dataset (C4) is never held in memory, later passes re-read the local file instead of
the network, and the file's digest fingerprints the data. Rows a preset drops (WikiText's blank
paragraph separators) are written as blank lines, which hold no record but keep every row's
line number equal to its 1-based row number, so messages point at the hub row.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from router_pipelines.data.config import DataConfig
from router_pipelines.data.sources import CorpusSource, read_records, scan_corpus
from router_pipelines.storage import atomic_file

logger = logging.getLogger(__name__)

STAGING_DIR = "staging"


@dataclass(frozen=True)
class HubSpec:
    """Everything ``datasets.load_dataset`` needs for one hub dataset."""

    path: str
    subset: str | None
    split: str
    streaming: bool
    text_field: str | list[str]
    skip_empty: bool = False  # empty rows are part of the dataset's layout, not errors

    @property
    def label(self) -> str:
        """``path[subset/split]``: the source name in messages (rows are ``label:row``)."""
        return f"{self.path}[{self.subset or 'default'}/{self.split}]"

    @property
    def fields(self) -> list[str]:
        return [self.text_field] if isinstance(self.text_field, str) else list(self.text_field)


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


def hub_spec(cfg: DataConfig) -> HubSpec:
    """The resolved spec of ``cfg.hub_dataset``.

    Raises:
        ValueError: ``hub_dataset`` is unset, or a streamed dataset has no ``max_records``.
    """
    if cfg.hub_dataset is None:
        raise ValueError("hub_dataset: not set; use scan_corpus for local files")
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
    return spec


def spill_hub_dataset(cfg: DataConfig, target: str | Path) -> tuple[HubSpec, Path]:
    """Write the rows of ``cfg.hub_dataset`` to the JSONL file ``target`` (atomically).

    A streamed dataset contributes its first ``cfg.max_records`` rows (they are then all
    kept: subsampling a prefix would only shrink it); others are spilled whole and subsampled
    like local files.
    """
    import datasets  # deferred: importing `datasets` costs ~1 s and local runs never need it

    spec = hub_spec(cfg)
    kwargs: dict[str, Any] = {"name": spec.subset, "split": spec.split, "streaming": spec.streaming}
    if cfg.hub_trust_remote_code:
        # Only older `datasets` releases run loading scripts with this flag; since 4.0 it is
        # ignored (with a logged error) and script datasets such as ptb_text_only are read
        # from the hub's Parquet export instead.
        kwargs["trust_remote_code"] = True
    logger.info("loading hub dataset %s (%s)", spec.path, kwargs)
    rows = iter(datasets.load_dataset(spec.path, **kwargs))
    if spec.streaming:
        rows = itertools.islice(rows, cfg.max_records)
    fields = spec.fields
    target = Path(target)
    with atomic_file(target) as staging, staging.open("w", encoding="utf-8") as handle:
        for row in rows:
            if spec.skip_empty and _all_blank(row, fields):
                handle.write("\n")  # no record, but the next row keeps its number
            else:
                # default=str: hub rows may hold dates or bytes next to the text fields.
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return spec, target


def scan_hub_dataset(cfg: DataConfig) -> CorpusSource:
    """Spill ``cfg.hub_dataset`` to ``<cache_dir>/staging/`` and scan it like a local file."""
    spec = hub_spec(cfg)
    key = hashlib.sha256(
        json.dumps([asdict(spec), cfg.max_records], sort_keys=True).encode()
    ).hexdigest()[:16]
    target = Path(cfg.cache_dir) / STAGING_DIR / f"{spec.path.replace('/', '--')[-60:]}-{key}.jsonl"
    spec, path = spill_hub_dataset(cfg, target)
    return scan_corpus(
        path, cfg, source=spec.label, text_fields=spec.fields, fmt="jsonl", hub=asdict(spec)
    )


def load_hub_records(cfg: DataConfig) -> pd.DataFrame:
    """A hub dataset as a validated DataFrame (small datasets, tests), through a temp spill.

    Raises:
        ValueError: a streamed dataset without ``max_records``.
        DataValidationError: as :func:`~router_pipelines.data.sources.read_records`, with
            ``path[subset/split]:row`` locations.
    """
    spec = hub_spec(cfg)
    with tempfile.TemporaryDirectory(prefix="hub_spill_") as folder:
        _, path = spill_hub_dataset(cfg, Path(folder) / "rows.jsonl")
        return read_records(path, cfg, source=spec.label, text_fields=spec.fields, fmt="jsonl")


def _all_blank(row: dict, fields: list[str]) -> bool:
    values = [row.get(name) for name in fields]
    return all(isinstance(value, str) and not value.strip() for value in values)
