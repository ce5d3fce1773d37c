"""From a scanned corpus to a tokenizer and two token stores, streaming, through the cache.

1. :func:`choose_splits` draws the subsample and the train/validation split on record numbers
   (a byte per record, :func:`~.sampling.assign_splits`): the same records in the same source
   order as splitting an in-memory frame.
2. :func:`prepare_token_data` fingerprints the inputs; on a cache miss it streams the train
   texts once into the BPE trainer (unless a pretrained tokenizer is named), then streams the
   corpus once more, tokenizing chunks (in ``num_proc`` workers when asked) and packing them
   into the ``train`` and ``validation`` stores of a new cache entry.

The fingerprint hashes the corpus file (pass 1 computed its sha256) with the reading and
sampling settings, rather than the records themselves: computing it reads nothing more.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
import transformers
from transformers import PreTrainedTokenizerBase

from router_pipelines.data.cache import (
    CacheEntry,
    fingerprint,
    load_entry,
    write_entry,
)
from router_pipelines.data.config import DataConfig
from router_pipelines.data.encoding import (
    BlockPacker,
    InstructionTask,
    PretrainingTask,
    TextEncoder,
    ordered_map,
)
from router_pipelines.data.formats import messages_to_text
from router_pipelines.data.packing import check_instruction_tokenizer, require_eos
from router_pipelines.data.sampling import TRAIN, VALIDATION, assign_splits
from router_pipelines.data.sources import CorpusSource, iter_examples
from router_pipelines.data.token_store import (
    STORE_FORMAT_VERSION,
    SplitWriter,
    TokenBlocks,
    ids_dtype,
)
from router_pipelines.data.tokenizer import (
    ensure_chat_template,
    ensure_pad_token,
    load_pretrained_tokenizer,
    train_bpe_tokenizer,
)
from router_pipelines.storage import digest_json, digest_path

logger = logging.getLogger(__name__)

SPLIT_NAMES = {TRAIN: "train", VALIDATION: "validation"}
CHUNK_RECORDS = {"pretraining": 1024, "instruction": 256}  # examples per tokenizer call
CHUNK_CHARS = 4_000_000  # ... or fewer, when they hold this much text (bounds memory)


@dataclass(frozen=True, eq=False)  # eq=False: no elementwise array comparison
class CorpusSplit:
    """Which records of a scanned corpus train and which validate (``assignment`` codes)."""

    corpus: CorpusSource
    assignment: np.ndarray  # (records,) uint8: 0 unused, 1 train, 2 validation
    max_records: int | None
    seed: int
    validation_fraction: float

    @property
    def n_train(self) -> int:
        return int(np.count_nonzero(self.assignment == TRAIN))

    @property
    def n_validation(self) -> int:
        return int(np.count_nonzero(self.assignment == VALIDATION))


@dataclass
class TokenData:
    """What the tokenize node returns, plus where it came from."""

    tokenizer: PreTrainedTokenizerBase
    train: TokenBlocks
    validation: TokenBlocks
    fingerprint: str
    cache_hit: bool
    cache_path: str
    meta: dict[str, Any]
    seconds: float


def choose_splits(corpus: CorpusSource, cfg: DataConfig) -> CorpusSplit:
    """Subsample ``cfg.max_records`` records and hold out ``cfg.validation_fraction``."""
    try:
        codes = assign_splits(corpus.records, cfg.max_records, cfg.validation_fraction, cfg.seed)
    except ValueError as err:
        raise ValueError(f"data.{err}") from err
    return CorpusSplit(corpus, codes, cfg.max_records, cfg.seed, cfg.validation_fraction)


def prepare_token_data(
    split: CorpusSplit, cfg: DataConfig, tokenizer: PreTrainedTokenizerBase | None = None
) -> TokenData:
    """Open the cached tokenizer and token stores of ``split``, or build and cache them.

    ``tokenizer``: tokenize with this one (e.g. a chat set for a model trained on another
    corpus) instead of ``cfg.tokenizer``; its vocabulary and chat template enter the fingerprint.
    """
    started = time.perf_counter()
    inputs = fingerprint_inputs(split, cfg)
    if tokenizer is not None:
        inputs["tokenizer"] = given_tokenizer_inputs(tokenizer)
    key = fingerprint(inputs)
    entry = load_entry(cfg.cache_dir, key, trust_remote_code=cfg.tokenizer.trust_remote_code)
    if entry is None:
        entry = _build(split, cfg, key, inputs, tokenizer)
    else:
        logger.info("token cache hit: %s", entry.path)
    return TokenData(
        tokenizer=entry.tokenizer,
        train=entry.train,
        validation=entry.validation,
        fingerprint=key,
        cache_hit=entry.cache_hit,
        cache_path=str(entry.path),
        meta=entry.meta,
        seconds=time.perf_counter() - started,
    )


def fingerprint_inputs(split: CorpusSplit, cfg: DataConfig) -> dict[str, Any]:
    """Everything the stores depend on, as JSON-ready values (``num_proc`` is not: it changes
    nothing in the result)."""
    corpus = split.corpus
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
        "store_format": STORE_FORMAT_VERSION,
        "corpus": {
            "sha256": corpus.sha256,
            "format": corpus.format,
            "text_fields": list(corpus.text_fields),
            "records": corpus.records,
            "hub": corpus.hub,
        },
        "sampling": {
            "max_records": split.max_records,
            "seed": split.seed,
            "validation_fraction": split.validation_fraction,
        },
        "mode": cfg.mode,
        "seq_len": cfg.seq_len,
        "tokenizer": tokenizer,
        "libraries": {
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
            "numpy": np.__version__,
        },
    }


def given_tokenizer_inputs(tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """What a given tokenizer contributes to the fingerprint: vocabulary, specials, template."""
    return {
        "kind": "given",
        "digest": digest_json(
            {
                "vocab": sorted(tokenizer.get_vocab().items()),
                "special": {k: str(v) for k, v in tokenizer.special_tokens_map.items()},
                "chat_template": tokenizer.chat_template,
            }
        ),
    }


def split_examples(split: CorpusSplit, code: int) -> Iterator[dict]:
    """The examples of one split (``TRAIN`` or ``VALIDATION``), streamed in source order."""
    for number, example in enumerate(iter_examples(split.corpus)):
        if split.assignment[number] == code:
            yield example


def example_text(example: dict) -> str:
    """The plain text of an example (chats flattened), e.g. to train a tokenizer on."""
    if "text" in example:
        return example["text"]
    return messages_to_text(example["messages"])


def _build(
    split: CorpusSplit,
    cfg: DataConfig,
    key: str,
    inputs: dict[str, Any],
    given: PreTrainedTokenizerBase | None = None,
) -> CacheEntry:
    started = time.perf_counter()
    tokenizer = _tokenizer_for(split, cfg) if given is None else given
    tokenizer_seconds = time.perf_counter() - started

    def write_splits(folder: Path) -> dict[str, Any]:
        return write_token_stores(folder, tokenizer, split, cfg, key)

    meta = {
        "inputs": inputs,
        "num_proc": cfg.workers,
        "tokenizer_seconds": round(tokenizer_seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = write_entry(cfg.cache_dir, key, tokenizer, write_splits, meta)
    logger.info("token cache written: %s", path)
    entry = load_entry(cfg.cache_dir, key, trust_remote_code=cfg.tokenizer.trust_remote_code)
    if entry is None:
        raise RuntimeError(f"{path}: the cache entry just written cannot be read back")
    entry.tokenizer, entry.cache_hit = tokenizer, False  # the one in memory: no re-read
    return entry


def write_token_stores(
    folder: Path, tokenizer: PreTrainedTokenizerBase, split: CorpusSplit, cfg: DataConfig, key: str
) -> dict[str, Any]:
    """Stream the corpus once into the ``train`` and ``validation`` stores under ``folder``.

    Returns:
        Per split: examples, rows, tokens, supervised_tokens, truncated, dropped; and the
        wall time and throughput of the pass.

    Raises:
        ValueError: a split gives no block (naming ``data.seq_len`` and, for validation,
            ``data.validation_fraction``).
    """
    started = time.perf_counter()
    instruction = cfg.mode == "instruction"
    dtype = ids_dtype(max(len(tokenizer), max(tokenizer.get_vocab().values(), default=0) + 1))
    if instruction:
        check_instruction_tokenizer(tokenizer)
        task: Any = InstructionTask(tokenizer, cfg.seq_len)
    else:
        task = PretrainingTask(TextEncoder(tokenizer), require_eos(tokenizer), dtype)
    writers = {
        code: SplitWriter(folder / name, cfg.seq_len, dtype, masked=instruction)
        for code, name in SPLIT_NAMES.items()
    }
    packers = {code: BlockPacker(cfg.seq_len, dtype) for code in SPLIT_NAMES}
    dropped = dict.fromkeys(SPLIT_NAMES, 0)
    truncated = dict.fromkeys(SPLIT_NAMES, 0)
    codes: deque[int] = deque()  # the split of each chunk in flight, in submission order

    def tagged_chunks() -> Iterator[list]:
        for code, chunk in _chunks(split, cfg.mode):
            codes.append(code)
            yield chunk

    try:
        for result in ordered_map(task, tagged_chunks(), cfg.workers):
            code = codes.popleft()
            if instruction:
                ids, labels, mask, n_truncated, n_dropped = result
                writers[code].append(ids, labels, mask)
                truncated[code] += n_truncated
                dropped[code] += n_dropped
            else:
                writers[code].append(packers[code].add(result))
        counts = {name: writers[code].close(name, key) for code, name in SPLIT_NAMES.items()}
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    seconds = time.perf_counter() - started
    stats = {}
    for code, name in SPLIT_NAMES.items():
        records = split.n_train if code == TRAIN else split.n_validation
        stats[name] = {
            "examples": records,
            "rows": counts[name]["rows"],
            "tokens": counts[name]["tokens"],
            "supervised_tokens": counts[name]["supervised_tokens"],
            "truncated": truncated[code],
            "dropped": dropped[code],
        }
        if instruction and (truncated[code] or dropped[code]):
            logger.warning(
                "%s: %d of %d conversations truncated to seq_len=%d, %d dropped "
                "(no assistant token left)",
                name,
                truncated[code],
                records,
                cfg.seq_len,
                dropped[code],
            )
        if counts[name]["rows"] == 0 and records > 0:
            raise ValueError(_no_block_message(name, records, packers[code].tokens, cfg))
    stats["tokenize_seconds"] = round(seconds, 3)
    stats["tokenize_mb_per_s"] = round(split.corpus.n_bytes / max(seconds, 1e-9) / 1e6, 3)
    return stats


def _chunks(split: CorpusSplit, mode: str) -> Iterator[tuple[int, list]]:
    """``(split code, examples)`` chunks in source order; each split's chunks stay in order."""
    limit = CHUNK_RECORDS[mode]
    buffers: dict[int, list] = {code: [] for code in SPLIT_NAMES}
    chars = dict.fromkeys(SPLIT_NAMES, 0)
    for number, example in enumerate(iter_examples(split.corpus)):
        code = int(split.assignment[number])
        if code not in buffers:
            continue
        if mode == "instruction":
            payload: Any = example["messages"]
            chars[code] += sum(len(m["content"]) for m in payload)
        else:
            payload = example["text"]
            chars[code] += len(payload)
        buffers[code].append(payload)
        if len(buffers[code]) >= limit or chars[code] >= CHUNK_CHARS:
            yield code, buffers[code]
            buffers[code], chars[code] = [], 0
    for code, buffer in buffers.items():
        if buffer:
            yield code, buffer


def _no_block_message(name: str, records: int, tokens: int, cfg: DataConfig) -> str:
    if name == "validation":
        return (
            f"data.validation_fraction / data.seq_len: the validation split ({records} "
            f"record(s), validation_fraction={cfg.validation_fraction}) gives no block of "
            f"seq_len={cfg.seq_len}"
            + (f" ({tokens} tokens)" if cfg.mode == "pretraining" else " (all dropped)")
            + "; raise data.validation_fraction, lower data.seq_len or give it more data"
        )
    if cfg.mode == "instruction":
        return (
            f"data.seq_len: no train conversation of {records} keeps an assistant token "
            f"within seq_len={cfg.seq_len}; raise data.seq_len"
        )
    return (
        f"data.seq_len: the train split ({records} document(s)) gives {tokens} tokens, fewer "
        f"than one block of seq_len={cfg.seq_len}; lower data.seq_len or give it more data"
    )


def _tokenizer_for(split: CorpusSplit, cfg: DataConfig) -> PreTrainedTokenizerBase:
    tok = cfg.tokenizer
    if tok.name_or_path is not None:
        tokenizer = load_pretrained_tokenizer(tok.name_or_path, tok.trust_remote_code)
    else:
        texts = (example_text(example) for example in split_examples(split, TRAIN))
        tokenizer = train_bpe_tokenizer(
            texts, tok.vocab_size, tok.min_frequency, length=split.n_train
        )
    ensure_pad_token(tokenizer)
    if cfg.mode == "instruction":
        ensure_chat_template(tokenizer)
    return tokenizer
