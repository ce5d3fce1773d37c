"""Nodes of the ``data_processing`` pipeline: parameters in, typed config, library call, data out.

No node holds the corpus: ``ingest_corpus`` streams it once and returns a small descriptor
(counts and digest), ``split_corpus`` assigns record numbers to train and validation, and
``tokenize_corpus`` streams it again into memory-mapped token stores (through the token cache).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from router_pipelines.config import config_from_dict
from router_pipelines.data.config import DataConfig
from router_pipelines.hooks import main_process_first

if TYPE_CHECKING:  # the data modules import transformers: only the nodes that run load them
    from transformers import PreTrainedTokenizerBase

    from router_pipelines.data.prepare import CorpusSplit
    from router_pipelines.data.sources import CorpusSource
    from router_pipelines.data.token_store import TokenBlocks

logger = logging.getLogger(__name__)


def ingest_corpus(data_params: dict[str, Any]) -> CorpusSource:
    """Read and validate the corpus (``data.hub_dataset`` when set, else ``data.raw_path``).

    Returns:
        The corpus descriptor: file, valid/read/skipped record counts, bytes and sha256.

    Raises:
        ValueError: bad parameters; ``DataValidationError`` for malformed records.
        FileNotFoundError: ``data.raw_path`` does not exist.
    """
    from router_pipelines.data.hub import scan_hub_dataset
    from router_pipelines.data.sources import scan_corpus

    cfg = config_from_dict(DataConfig, data_params, "data")
    if cfg.hub_dataset is not None:
        return scan_hub_dataset(cfg)
    return scan_corpus(cfg.raw_path, cfg)


def split_corpus(corpus: CorpusSource, data_params: dict[str, Any]) -> CorpusSplit:
    """Subsample ``data.max_records`` records and hold out ``data.validation_fraction``."""
    from router_pipelines.data.prepare import choose_splits

    cfg = config_from_dict(DataConfig, data_params, "data")
    corpus_split = choose_splits(corpus, cfg)
    logger.info(
        "split %d records: %d train, %d validation",
        corpus.records,
        corpus_split.n_train,
        corpus_split.n_validation,
    )
    return corpus_split


def tokenize_corpus(
    corpus_split: CorpusSplit, data_params: dict[str, Any]
) -> tuple[PreTrainedTokenizerBase, TokenBlocks, TokenBlocks, dict[str, Any]]:
    """Build the tokenizer and the token stores of both splits (through the token cache).

    Returns:
        ``(tokenizer, train_tokens, validation_tokens, data_report)``; the token blocks are
        memory-mapped ``(N, data.seq_len)`` stores; the report holds plain numbers and strings.

    Raises:
        ValueError: a split gives no block; nothing is cached then.
    """
    from router_pipelines.data.prepare import prepare_token_data

    cfg = config_from_dict(DataConfig, data_params, "data")
    # Under `accelerate launch` the main process builds and writes the cache entry; the others
    # wait, then read it back (a cache hit) instead of racing it for the same entry.
    with main_process_first():
        tokens = prepare_token_data(corpus_split, cfg)
    corpus = corpus_split.corpus
    counts = tokens.meta["counts"]
    report = {
        "fingerprint": tokens.fingerprint,
        "cache_hit": tokens.cache_hit,
        "cache_path": tokens.cache_path,
        "source": corpus.source,
        "records_read": corpus.records_read,
        "records_skipped": corpus.records_skipped,
        "train_records": corpus_split.n_train,
        "validation_records": corpus_split.n_validation,
        "mode": cfg.mode,
        "seq_len": cfg.seq_len,
        "vocab_size": len(tokens.tokenizer),
        "seconds": round(tokens.seconds, 3),
        "bytes_read": corpus.n_bytes,
        "ingest_seconds": round(corpus.seconds, 3),
        "ingest_mb_per_s": round(corpus.mb_per_s, 3),
        "tokenize_seconds": counts.get("tokenize_seconds", 0.0),
        "tokenize_mb_per_s": counts.get("tokenize_mb_per_s", 0.0),
        "num_proc": cfg.workers,
    }
    for name in ("train", "validation"):
        for key in ("rows", "tokens", "supervised_tokens", "truncated", "dropped"):
            report[f"{name}_{key}"] = int(counts[name][key])
    logger.info("data report: %s", report)
    return tokens.tokenizer, tokens.train, tokens.validation, report
