"""Typed configuration of the data layer (the ``data:`` parameter group)."""

from __future__ import annotations

from dataclasses import dataclass, field

from router_pipelines.config import check_choice, check_positive

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
        if self.name_or_path is not None and (
            not isinstance(self.name_or_path, str) or not self.name_or_path.strip()
        ):
            raise ValueError(
                f"name_or_path: expected a non-empty string or null, got {self.name_or_path!r}"
            )
        _check_int("vocab_size", self.vocab_size)
        if self.vocab_size < MIN_BPE_VOCAB:
            raise ValueError(
                f"vocab_size: must be >= {MIN_BPE_VOCAB} (256 bytes + special tokens), "
                f"got {self.vocab_size}"
            )
        _check_int("min_frequency", self.min_frequency)
        check_positive("min_frequency", self.min_frequency)
        _check_bool("trust_remote_code", self.trust_remote_code)


@dataclass
class DataConfig:
    """Where the corpus comes from and how it becomes fixed-length token blocks."""

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

    def __post_init__(self) -> None:
        check_choice("format", self.format, FORMATS)
        check_choice("mode", self.mode, MODES)
        check_choice("on_invalid", self.on_invalid, POLICIES)
        for key in ("hub_dataset", "hub_subset"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{key}: expected a non-empty string or null, got {value!r}")
        if self.hub_split is not None and (
            not isinstance(self.hub_split, str) or not self.hub_split
        ):
            raise ValueError(f"hub_split: expected a split name or null, got {self.hub_split!r}")
        if self.streaming is not None:
            _check_bool("streaming", self.streaming)
        _check_bool("hub_trust_remote_code", self.hub_trust_remote_code)
        self._check_text_field()
        if self.max_records is not None:
            _check_int("max_records", self.max_records)
            check_positive("max_records", self.max_records)
        _check_int("seed", self.seed)
        check_positive("seed", self.seed, allow_zero=True)
        check_positive("validation_fraction", self.validation_fraction, allow_zero=True)
        if self.validation_fraction >= 1:
            raise ValueError(
                f"validation_fraction: must be in [0, 1), got {self.validation_fraction!r}"
            )
        _check_int("seq_len", self.seq_len)
        if self.seq_len < 2:
            raise ValueError(f"seq_len: must be >= 2, got {self.seq_len!r}")
        if not isinstance(self.tokenizer, TokenizerConfig):
            raise ValueError(
                f"tokenizer: expected a mapping of tokenizer settings, got {self.tokenizer!r}"
            )
        if not isinstance(self.cache_dir, str) or not self.cache_dir:
            raise ValueError(f"cache_dir: expected a folder path, got {self.cache_dir!r}")
        if self.format == "text" and self.mode == "instruction":
            raise ValueError(
                "format: 'text' files hold plain documents and cannot feed mode 'instruction'; "
                "use jsonl/chat_jsonl/parquet records with chat fields"
            )

    @property
    def text_fields(self) -> list[str]:
        """``text_field`` as a list."""
        return [self.text_field] if isinstance(self.text_field, str) else list(self.text_field)

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


def _check_int(key: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key}: expected an integer, got {value!r}")


def _check_bool(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{key}: expected true or false, got {value!r}")
