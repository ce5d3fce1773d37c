"""Data layer: read, validate, sample, tokenize, pack and store corpora (no Kedro here).

Names are imported lazily (PEP 562): a tokenizing worker process imports only the light module
it needs (:mod:`router_pipelines.data.encoding`), not transformers and pandas through this file.
"""

from router_pipelines.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "CHAT_TEMPLATE": "tokenizer",
        "CorpusSource": "sources",
        "CorpusSplit": "prepare",
        "DataConfig": "config",
        "DataValidationError": "validation",
        "HUB_PRESETS": "hub",
        "IGNORE_INDEX": "packing",
        "Problem": "validation",
        "TokenBlockDataset": "torch_dataset",
        "TokenBlocks": "token_store",
        "TokenData": "prepare",
        "TokenizerConfig": "config",
        "choose_splits": "prepare",
        "ensure_pad_token": "tokenizer",
        "fingerprint": "cache",
        "load_hub_records": "hub",
        "load_pretrained_tokenizer": "tokenizer",
        "prepare_token_data": "prepare",
        "read_records": "sources",
        "resolve_hub_dataset": "hub",
        "scan_corpus": "sources",
        "subsample": "sampling",
        "token_byte_lengths": "tokenizer",
        "train_bpe_tokenizer": "tokenizer",
        "train_validation_split": "sampling",
    },
)
