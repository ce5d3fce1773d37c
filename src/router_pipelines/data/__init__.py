"""Data layer: read, validate, sample, tokenize, pack and cache corpora (no Kedro here)."""

from router_pipelines.data.cache import CachedTokens, fingerprint, load_or_build
from router_pipelines.data.config import DataConfig, TokenizerConfig
from router_pipelines.data.packing import IGNORE_INDEX, tokenize_records
from router_pipelines.data.prepare import TokenData, prepare_token_data
from router_pipelines.data.sampling import subsample, train_validation_split
from router_pipelines.data.sources import (
    HUB_PRESETS,
    load_hub_records,
    read_records,
    resolve_hub_dataset,
)
from router_pipelines.data.tokenizer import (
    CHAT_TEMPLATE,
    ensure_pad_token,
    load_pretrained_tokenizer,
    train_bpe_tokenizer,
)
from router_pipelines.data.torch_dataset import TokenBlockDataset
from router_pipelines.data.validation import DataValidationError, Problem

__all__ = [
    "CHAT_TEMPLATE",
    "HUB_PRESETS",
    "IGNORE_INDEX",
    "CachedTokens",
    "DataConfig",
    "DataValidationError",
    "Problem",
    "TokenBlockDataset",
    "TokenData",
    "TokenizerConfig",
    "ensure_pad_token",
    "fingerprint",
    "load_hub_records",
    "load_or_build",
    "load_pretrained_tokenizer",
    "prepare_token_data",
    "read_records",
    "resolve_hub_dataset",
    "subsample",
    "tokenize_records",
    "train_bpe_tokenizer",
    "train_validation_split",
]
