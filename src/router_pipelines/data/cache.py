"""Content-addressed cache of a tokenizer and its token stores, one folder per fingerprint.

Layout: ``<cache_dir>/<fingerprint>/{meta.json, tokenizer/, train/, validation/}``, where each
split folder is a token store (:mod:`~.token_store`) and ``fingerprint`` is the sha256 of
everything that determines the result (see :func:`fingerprint`). An entry is published whole
through :func:`router_pipelines.storage.atomic_directory` (written under a temporary sibling,
fsynced, renamed) and ``meta.json`` is written last, so a build that fails or is killed leaves
no entry that a later run would trust. A cache hit reads ``meta.json``, the tokenizer and the
``.npy`` headers; the tokens stay on disk until they are indexed.

Why library I/O and not a catalog dataset: "read the result if it exists, else build and save
it" needs the node's output to also be its input, which a Kedro DAG cannot express without a
cycle (and a versioned dataset would re-run the build anyway). So the tokenize node calls
:mod:`~.prepare` directly and hands plain objects to the catalog.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from router_pipelines.data.tokenizer import load_saved_tokenizer
from router_pipelines.data.token_store import STORE_FORMAT_VERSION, TokenBlocks
from router_pipelines.storage import atomic_directory, digest_json, digest_path

fingerprint = digest_json  # the cache key of an entry's inputs

logger = logging.getLogger(__name__)

META_FILE = "meta.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "validation")


@dataclass
class CacheEntry:
    """A tokenizer with its token stores, fresh or read back from the cache."""

    tokenizer: PreTrainedTokenizerBase
    splits: dict[str, TokenBlocks]
    meta: dict[str, Any]
    cache_hit: bool
    path: Path

    @property
    def train(self) -> TokenBlocks:
        return self.splits["train"]

    @property
    def validation(self) -> TokenBlocks:
        return self.splits["validation"]


class _PublishedMeanwhile(Exception):
    """Another run published the same entry while this one was building it."""


def load_entry(
    cache_dir: str | Path, key: str, trust_remote_code: bool = False
) -> CacheEntry | None:
    """Open the entry ``key`` under ``cache_dir``; ``None`` when it is absent or not ours."""
    path = Path(cache_dir) / key
    meta = _valid_meta(path, key)
    if meta is None:
        return None
    tokenizer = load_saved_tokenizer(path / TOKENIZER_DIR, trust_remote_code=trust_remote_code)
    splits = {split: TokenBlocks.open(path / split) for split in SPLITS}
    return CacheEntry(tokenizer, splits, meta, cache_hit=True, path=path)


def write_entry(
    cache_dir: str | Path,
    key: str,
    tokenizer: PreTrainedTokenizerBase,
    write_splits: Callable[[Path], dict[str, Any]],
    meta: Mapping[str, Any],
) -> Path:
    """Build and atomically publish ``<cache_dir>/<key>/``; returns its path.

    Args:
        write_splits: writes ``train/`` and ``validation/`` into the folder it is given and
            returns the counts recorded in ``meta.json`` under ``"counts"``; anything it
            raises leaves no entry behind.
        meta: the rest of ``meta.json`` (``fingerprint`` and ``store_format`` are added).

    If another run published the same key meanwhile, its (identical) entry is kept.
    """
    final = Path(cache_dir) / key
    try:
        with atomic_directory(final, replace=True) as staging:
            tokenizer.save_pretrained(staging / TOKENIZER_DIR)
            counts = write_splits(staging)
            if _valid_meta(final, key, quiet=True) is not None:
                raise _PublishedMeanwhile
            full = {
                **meta,
                "fingerprint": key,
                "store_format": STORE_FORMAT_VERSION,
                "counts": counts,
            }
            _write_meta(staging / META_FILE, full)  # last: a folder with meta.json is complete
    except _PublishedMeanwhile:
        logger.info("cache entry %s was published by another run; keeping it", final)
    return final


def _valid_meta(path: Path, key: str, quiet: bool = False) -> dict[str, Any] | None:
    """``meta.json`` of the entry at ``path`` if it is a complete, current entry for ``key``."""
    meta_path = path / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        meta = {}
    if not isinstance(meta, dict) or meta.get("fingerprint") != key:
        problem = "its meta.json names another fingerprint"
    elif meta.get("store_format") != STORE_FORMAT_VERSION:
        problem = "its token store format is not current"
    else:
        return meta
    if not quiet:
        logger.warning("ignoring cache entry %s: %s; rebuilding it", path, problem)
    return None


def _write_meta(path: Path, meta: Mapping[str, Any]) -> None:
    path.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
