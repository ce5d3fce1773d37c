"""Typed configuration of the data layer (the ``data:`` parameter group)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from router_pipelines.config import (
    check_bool,
    check_choice,
    check_fraction,
    check_int,
    check_non_empty_str,
    check_optional_int,
)

FORMATS = ("auto", "jsonl", "chat_jsonl", "parquet", "text")
MODES = ("pretraining", "instruction")
POLICIES = ("error", "skip")
# 256 byte symbols + our special tokens + at least one merge.
MIN_BPE_VOCAB = 256 + 6 + 1


@dataclass
class TokenizerConfig:
    """Which tokenizer to use: a pretrained one or a byte-level BPE trained on the train split."""

    name_or_path: str | None = None  # hub id or local folder; None trains our own BPE
    vocab_size: int = 8192  # BPE only: size of the trained vocabulary, special tokens included
    min_frequency: int = 2  # BPE only: a pair must occur this often to be merged
    trust_remote_code: bool = False  # pretrained only: run code shipped with the tokenizer

    def __post_init__(self) -> None:
        check_non_empty_str("name_or_path", self.name_or_path, optional=True)
        check_int("vocab_size", self.vocab_size, minimum=MIN_BPE_VOCAB)
        check_int("min_frequency", self.min_frequency, minimum=1)
        check_bool("trust_remote_code", self.trust_remote_code)


@dataclass
class DataConfig:
    """Where the corpus comes from and how it becomes fixed-length token blocks."""

    raw_path: str = "data/01_raw/python_docs.jsonl"  # the local corpus (unless hub_dataset)
    format: str = "auto"  # auto (from the file suffix) | jsonl | chat_jsonl | parquet | text
    hub_dataset: str | None = None  # c4 | wikitext2 | ptb | pileval | any hub id or local folder
    hub_subset: str | None = None  # dataset config name; None = the preset's or the default
    hub_split: str | None = None  # None = the preset's split, else "train"
    streaming: bool | None = None  # None = the preset's default (c4 streams)
    hub_trust_remote_code: bool = False  # only older `datasets` releases run loading scripts
    text_field: str | list[str] = "text"  # a field, or fields joined by newlines
    mode: str = "pretraining"  # pretraining (packed text) | instruction (masked chats)
    on_invalid: str = "error"  # error: stop on any bad record | skip: log and drop it
    max_records: int | None = None  # subsample this many records (None = all)
    seed: int = 42  # drives subsampling and the train/validation split
    validation_fraction: float = 0.05  # share of records held out, in [0, 1)
    seq_len: int = 256  # tokens per block / per padded conversation
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    cache_dir: str = "data/04_feature/token_cache"
    num_proc: int | None = None  # worker processes that tokenize chunks; None = 1 (in-process)

    def __post_init__(self) -> None:
        check_non_empty_str("raw_path", self.raw_path)
        check_choice("format", self.format, FORMATS)
        check_choice("mode", self.mode, MODES)
        check_choice("on_invalid", self.on_invalid, POLICIES)
        check_non_empty_str("hub_dataset", self.hub_dataset, optional=True)
        check_non_empty_str("hub_subset", self.hub_subset, optional=True)
        if self.hub_split is not None and (
            not isinstance(self.hub_split, str) or not self.hub_split
        ):
            raise ValueError(f"hub_split: expected a split name or null, got {self.hub_split!r}")
        if self.streaming is not None:
            check_bool("streaming", self.streaming)
        check_bool("hub_trust_remote_code", self.hub_trust_remote_code)
        self._check_text_field()
        check_optional_int("max_records", self.max_records, minimum=1)
        check_int("seed", self.seed, minimum=0)
        check_fraction("validation_fraction", self.validation_fraction)
        check_int("seq_len", self.seq_len, minimum=2)
        check_optional_int("num_proc", self.num_proc, minimum=1)
        if not isinstance(self.tokenizer, TokenizerConfig):
            raise ValueError(
                f"tokenizer: expected a mapping of tokenizer settings, got {self.tokenizer!r}"
            )
        check_non_empty_str("cache_dir", self.cache_dir)
        if Path(self.cache_dir).exists() and not Path(self.cache_dir).is_dir():
            raise ValueError(
                f"cache_dir: {self.cache_dir!r} exists and is a file, not a folder; "
                "point data.cache_dir at a folder (it is created if missing)"
            )
        if self.format == "text" and self.mode == "instruction":
            raise ValueError(
                "format: 'text' files hold plain documents and cannot feed mode 'instruction'; "
                "use jsonl/chat_jsonl/parquet records with chat fields"
            )

    @property
    def text_fields(self) -> list[str]:
        """``text_field`` as a list."""
        return [self.text_field] if isinstance(self.text_field, str) else list(self.text_field)

    @property
    def workers(self) -> int:
        """``num_proc`` with ``None`` read as 1."""
        return self.num_proc or 1

    def _check_text_field(self) -> None:
        fields = self.text_field if isinstance(self.text_field, list) else [self.text_field]
        if not fields or not all(isinstance(f, str) and f for f in fields):
            raise ValueError(
                f"text_field: expected a field name or a non-empty list of names, "
                f"got {self.text_field!r}"
            )
        if len(set(fields)) != len(fields):
            raise ValueError(f"text_field: duplicated names in {self.text_field!r}")
        if self.mode == "instruction" and isinstance(self.text_field, list) and len(fields) < 2:
            raise ValueError(
                "text_field: in instruction mode a list needs >= 2 fields "
                f"(user fields..., assistant field), got {self.text_field!r}"
            )
