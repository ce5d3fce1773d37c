"""Tokenizer build and tokenization of both splits, through the token cache.

The fingerprint hashes the records themselves (the ``text`` or ``messages`` the tokenizer will
see, after validation, subsampling and the split) rather than the raw file: that covers a changed
file, a changed hub dataset, ``max_records``, ``seed`` and ``validation_fraction`` at once, and
costs one pass of sha256 over a few MB.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import tokenizers
import transformers
from transformers import PreTrainedTokenizerBase

from router_pipelines.data.cache import (
    BuildResult,
    CachedTokens,
    digest_path,
    digest_values,
    load_or_build,
)
from router_pipelines.data.config import DataConfig
from router_pipelines.data.formats import messages_to_text
from router_pipelines.data.packing import tokenize_records
from router_pipelines.data.tokenizer import (
    ensure_chat_template,
    ensure_pad_token,
    load_pretrained_tokenizer,
    train_bpe_tokenizer,
)

CACHE_FORMAT_VERSION = 1  # bump when packing/masking changes what a cache entry holds


@dataclass
class TokenData:
    """What the tokenize node returns, plus where it came from."""

    tokenizer: PreTrainedTokenizerBase
    train: pd.DataFrame
    validation: pd.DataFrame
    fingerprint: str
    cache_hit: bool
    cache_path: str
    meta: dict[str, Any]
    seconds: float


def prepare_token_data(
    train_records: pd.DataFrame, validation_records: pd.DataFrame, cfg: DataConfig
) -> TokenData:
    """Build (or read from the cache) the tokenizer and the tokenized splits.

    Args:
        train_records: validated records (``text`` or ``messages`` column).
        validation_records: same columns; may be empty.
        cfg: mode, seq_len, tokenizer and cache settings.
    """
    started = time.perf_counter()
    inputs = fingerprint_inputs(train_records, validation_records, cfg)

    def build() -> BuildResult:
        tokenizer = _tokenizer_for(train_records, cfg)
        train, train_stats = tokenize_records(
            tokenizer, train_records, cfg.mode, cfg.seq_len, name="train split"
        )
        validation, validation_stats = tokenize_records(
            tokenizer, validation_records, cfg.mode, cfg.seq_len, name="validation split"
        )
        counts = {"train": train_stats, "validation": validation_stats}
        return tokenizer, train, validation, counts

    cached: CachedTokens = load_or_build(
        cfg.cache_dir, inputs, build, trust_remote_code=cfg.tokenizer.trust_remote_code
    )
    return TokenData(
        tokenizer=cached.tokenizer,
        train=cached.train,
        validation=cached.validation,
        fingerprint=cached.meta["fingerprint"],
        cache_hit=cached.cache_hit,
        cache_path=str(cached.path),
        meta=cached.meta,
        seconds=time.perf_counter() - started,
    )


def fingerprint_inputs(
    train_records: pd.DataFrame, validation_records: pd.DataFrame, cfg: DataConfig
) -> dict[str, Any]:
    """Everything the tokenized result depends on, as JSON-ready values."""
    column = "messages" if cfg.mode == "instruction" else "text"
    tok = cfg.tokenizer
    if tok.name_or_path is None:
        tokenizer = {
            "kind": "bpe",
            "vocab_size": tok.vocab_size,
            "min_frequency": tok.min_frequency,
        }
    else:
        local = Path(tok.name_or_path)
        tokenizer = {
            "kind": "pretrained",
            "name_or_path": tok.name_or_path,
            "files": digest_path(local) if local.exists() else None,
            "trust_remote_code": tok.trust_remote_code,
        }
    return {
        "cache_format": CACHE_FORMAT_VERSION,
        "records": {
            split: {"count": len(frame), "sha256": digest_values(frame[column].tolist())}
            for split, frame in (("train", train_records), ("validation", validation_records))
        },
        "sampling": {
            "max_records": cfg.max_records,
            "seed": cfg.seed,
            "validation_fraction": cfg.validation_fraction,
        },
        "mode": cfg.mode,
        "seq_len": cfg.seq_len,
        "tokenizer": tokenizer,
        "libraries": {
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
        },
    }


def record_texts(records: pd.DataFrame) -> list[str]:
    """Plain texts of a record frame (chats flattened), e.g. to train a tokenizer on."""
    if "text" in records.columns:
        return records["text"].tolist()
    return [messages_to_text(chat) for chat in records["messages"]]


def _tokenizer_for(train_records: pd.DataFrame, cfg: DataConfig) -> PreTrainedTokenizerBase:
    tok = cfg.tokenizer
    if tok.name_or_path is not None:
        tokenizer = load_pretrained_tokenizer(tok.name_or_path, tok.trust_remote_code)
    else:
        tokenizer = train_bpe_tokenizer(
            record_texts(train_records), tok.vocab_size, tok.min_frequency
        )
    ensure_pad_token(tokenizer)
    if cfg.mode == "instruction":
        ensure_chat_template(tokenizer)
    return tokenizer
