"""Data layer: read, validate, sample, tokenize, pack and store corpora (no Kedro here).

Names are imported lazily (PEP 562): a tokenizing worker process imports only the light module
it needs (:mod:`router_pipelines.data.encoding`), not transformers and pandas through this file.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CHAT_TEMPLATE": "tokenizer",
    "HUB_PRESETS": "hub",
    "IGNORE_INDEX": "packing",
    "CorpusSource": "sources",
    "CorpusSplit": "prepare",
    "DataConfig": "config",
    "DataValidationError": "validation",
    "Problem": "validation",
    "TokenBlockDataset": "torch_dataset",
    "TokenBlocks": "token_store",
    "TokenData": "prepare",
    "TokenizerConfig": "config",
    "ensure_pad_token": "tokenizer",
    "fingerprint": "cache",
    "load_hub_records": "hub",
    "load_pretrained_tokenizer": "tokenizer",
    "prepare_token_data": "prepare",
    "read_records": "sources",
    "resolve_hub_dataset": "hub",
    "scan_corpus": "sources",
    "choose_splits": "prepare",
    "subsample": "sampling",
    "token_byte_lengths": "tokenizer",
    "train_bpe_tokenizer": "tokenizer",
    "train_validation_split": "sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
