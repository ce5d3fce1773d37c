"""Content-addressed cache of a tokenizer and its tokenized train/validation frames.

Layout: ``<cache_dir>/<fingerprint>/{meta.json, train.parquet, validation.parquet, tokenizer/}``
where ``fingerprint`` is the sha256 of everything that determines the result (see
:func:`fingerprint`). A folder is only ever published whole: it is written under a temporary
name in the same parent and renamed with ``os.replace``, so a killed run leaves at most a
``.tmp-*`` folder, never a half cache that a later run would trust.

Why library I/O and not a catalog dataset: "read the result if it exists, else build and save
it" needs the node's output to also be its input, which a Kedro DAG cannot express without a
cycle (and a versioned dataset would re-run the build anyway). So the tokenize node calls
:func:`load_or_build` directly and hands plain objects to the catalog.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from router_pipelines.data.packing import COLUMNS

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLIT_FILES = {"train": "train.parquet", "validation": "validation.parquet"}


@dataclass
class CachedTokens:
    """A tokenizer with its tokenized splits, fresh or read back from the cache."""

    tokenizer: PreTrainedTokenizerBase
    train: pd.DataFrame
    validation: pd.DataFrame
    meta: dict[str, Any]
    cache_hit: bool
    path: Path


# What a build returns: tokenizer, train rows, validation rows, counts for meta.json.
BuildResult = tuple[PreTrainedTokenizerBase, pd.DataFrame, pd.DataFrame, dict[str, Any]]


def fingerprint(inputs: Mapping[str, Any]) -> str:
    """sha256 hex of ``inputs`` as canonical JSON (sorted keys), stable across runs."""
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def digest_values(values: Iterable[Any]) -> str:
    """sha256 hex of a sequence of JSON-serialisable values (e.g. texts or chats), in order."""
    digest = hashlib.sha256()
    for value in values:
        digest.update(json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def digest_path(path: str | Path) -> str:
    """sha256 hex of a file's bytes, or of every file (relative name and bytes) in a folder."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def load_or_build(
    cache_dir: str | Path,
    inputs: Mapping[str, Any],
    build: Callable[[], BuildResult],
    trust_remote_code: bool = False,
) -> CachedTokens:
    """Return the cached result for ``inputs``, or run ``build`` and cache what it returns.

    Args:
        cache_dir: parent folder of all cache entries.
        inputs: everything the result depends on; hashed into the entry's name.
        build: called only on a miss.
        trust_remote_code: passed to ``AutoTokenizer.from_pretrained`` when reading back.
    """
    key = fingerprint(inputs)
    cached = load_cached(cache_dir, key, trust_remote_code)
    if cached is not None:
        logger.info("token cache hit: %s", cached.path)
        return cached
    started = time.perf_counter()
    tokenizer, train, validation, counts = build()
    meta = {
        "fingerprint": key,
        "inputs": dict(inputs),
        "counts": counts,
        "build_seconds": round(time.perf_counter() - started, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = write_cache(cache_dir, key, tokenizer, {"train": train, "validation": validation}, meta)
    logger.info("token cache written: %s", path)
    return CachedTokens(tokenizer, train, validation, meta, cache_hit=False, path=path)


def load_cached(
    cache_dir: str | Path, key: str, trust_remote_code: bool = False
) -> CachedTokens | None:
    """Read the entry ``key`` under ``cache_dir``; ``None`` when it is absent or not ours."""
    path = Path(cache_dir) / key
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    if meta.get("fingerprint") != key:
        logger.warning("ignoring cache entry %s: its meta.json names another fingerprint", path)
        return None
    tokenizer = AutoTokenizer.from_pretrained(
        path / TOKENIZER_DIR, trust_remote_code=trust_remote_code
    )
    frames = {split: _read_frame(path / name) for split, name in SPLIT_FILES.items()}
    return CachedTokens(
        tokenizer, frames["train"], frames["validation"], meta, cache_hit=True, path=path
    )


def write_cache(
    cache_dir: str | Path,
    key: str,
    tokenizer: PreTrainedTokenizerBase,
    frames: Mapping[str, pd.DataFrame],
    meta: Mapping[str, Any],
) -> Path:
    """Atomically publish ``<cache_dir>/<key>/`` (temp folder, then ``os.replace``).

    If another run published the same key meanwhile, its (identical) entry is kept.
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / key
    # mkdir (not tempfile.mkdtemp, which makes 0700 folders) so a shared cache keeps the umask.
    staging = cache_dir / f".tmp-{key[:12]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        tokenizer.save_pretrained(staging / TOKENIZER_DIR)
        for split, name in SPLIT_FILES.items():
            _write_frame(frames[split], staging / name)
        _write_meta(staging / META_FILE, meta)  # last: a folder with meta.json is complete
        try:
            os.replace(staging, final)
        except OSError:
            if not (final / META_FILE).is_file():
                raise
            logger.info("cache entry %s was published by another run; keeping it", final)
            shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_frame(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # An explicit list<int64> schema, so an empty split is typed like a full one.
    row_type = pa.list_(pa.int64())
    table = pa.table({name: pa.array(frame[name].tolist(), type=row_type) for name in COLUMNS})
    pq.write_table(table, path)


def _read_frame(path: Path) -> pd.DataFrame:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=list(COLUMNS))
    columns = {}
    for name in COLUMNS:
        cells = table.column(name).combine_chunks()
        n_rows = len(cells)
        values = cells.flatten().to_numpy() if n_rows else None
        if values is None or len(values) % n_rows:
            columns[name] = cells.to_pylist()  # empty, or rows of unequal length (not ours)
        else:
            # ndarray.tolist gives the plain lists of ints a fresh build produces, ~10x faster
            # than Arrow's per-cell to_pylist.
            columns[name] = values.reshape(n_rows, -1).tolist()
    return pd.DataFrame(columns, columns=list(COLUMNS))
