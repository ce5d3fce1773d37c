"""Nodes of the ``data_processing`` pipeline: parameters in, typed config, library call, data out.

The records travel as DataFrames (a ``text`` or a ``messages`` column); ``attrs["ingest"]``
carries the read/skipped counts from ingestion to the final report.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd
from transformers import PreTrainedTokenizerBase

from router_pipelines.config import config_from_dict
from router_pipelines.data.config import DataConfig
from router_pipelines.data.prepare import prepare_token_data
from router_pipelines.data.sampling import subsample, train_validation_split
from router_pipelines.data.sources import load_hub_records, read_records
from router_pipelines.hooks import main_process_first

logger = logging.getLogger(__name__)


def ingest_corpus(raw_path: str, data_params: dict[str, Any]) -> pd.DataFrame:
    """Read and validate the corpus: ``data.hub_dataset`` when set, else the file ``raw_path``.

    Returns:
        One row per valid record (``text`` [+ ``url``, ``timestamp``] or ``messages``).

    Raises:
        ValueError: bad parameters; ``DataValidationError`` for malformed records.
        FileNotFoundError: ``raw_path`` does not exist.
    """
    cfg = config_from_dict(DataConfig, data_params, "data")
    if cfg.hub_dataset is not None:
        return load_hub_records(cfg)
    return read_records(raw_path, cfg)


def split_corpus(
    raw_records: pd.DataFrame, data_params: dict[str, Any]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Subsample ``data.max_records`` records and hold out ``data.validation_fraction``."""
    cfg = config_from_dict(DataConfig, data_params, "data")
    records = subsample(raw_records, cfg.max_records, cfg.seed)
    train, validation = train_validation_split(records, cfg.validation_fraction, cfg.seed)
    logger.info(
        "split %d records: %d train, %d validation", len(records), len(train), len(validation)
    )
    return train, validation


def tokenize_corpus(
    train_records: pd.DataFrame, validation_records: pd.DataFrame, data_params: dict[str, Any]
) -> tuple[PreTrainedTokenizerBase, pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Build the tokenizer and the token rows of both splits (through the token cache).

    Returns:
        ``(tokenizer, train_tokens, validation_tokens, data_report)``; the token frames have
        list-of-int columns ``input_ids``, ``labels``, ``attention_mask`` of length
        ``data.seq_len``; the report holds plain numbers and strings.
    """
    cfg = config_from_dict(DataConfig, data_params, "data")
    # Under `accelerate launch` the main process builds and writes the cache entry; the others
    # wait, then read it back (a cache hit) instead of racing it for the same entry.
    with main_process_first():
        tokens = prepare_token_data(train_records, validation_records, cfg)
    ingest = train_records.attrs.get("ingest", {})
    counts = tokens.meta["counts"]
    report = {
        "fingerprint": tokens.fingerprint,
        "cache_hit": tokens.cache_hit,
        "cache_path": tokens.cache_path,
        "source": ingest.get("source", "unknown"),
        "records_read": ingest.get("records_read", -1),
        "records_skipped": ingest.get("records_skipped", -1),
        "train_records": len(train_records),
        "validation_records": len(validation_records),
        "mode": cfg.mode,
        "seq_len": cfg.seq_len,
        "vocab_size": len(tokens.tokenizer),
        "seconds": round(tokens.seconds, 3),
    }
    for split in ("train", "validation"):
        for key in ("rows", "tokens", "supervised_tokens", "truncated", "dropped"):
            report[f"{split}_{key}"] = int(counts[split][key])
    logger.info("data report: %s", report)
    return tokens.tokenizer, tokens.train, tokens.validation, report
