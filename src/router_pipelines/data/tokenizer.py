"""Tokenizers: a pretrained one by name/path, or a byte-level BPE trained on the train split.

The trained tokenizer is a standard ``PreTrainedTokenizerFast`` (saved with ``save_pretrained``,
loaded back with ``AutoTokenizer.from_pretrained``) with bos/eos/pad tokens, one special token per
chat role, and a chat template whose assistant turns sit in ``{% generation %}`` blocks, so
instruction mode can mask everything but the assistant's tokens with our own tokenizer too.

:func:`token_byte_lengths` says how many bytes of text each token id stands for, so that
evaluation can report bits per byte, a loss comparable across tokenizers.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (EOS_TOKEN, BOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS)  # ids 0..5 in this order

# Zephyr-like layout: "<|role|>\n{content}<eos>\n" per message. The assistant's content and its
# EOS are inside {% generation %} so the model learns to answer and to stop; the role headers
# and the newline after EOS are prompt. Uses only `eos_token`, so it also fits pretrained
# tokenizers that ship without a template (their role markers are then ordinary text).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{{- '\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
)
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, min_frequency: int = 2, length: int | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style, no unknown tokens) on ``texts``.

    Args:
        texts: training documents (the train split only, so validation stays unseen); any
            iterable, read once: a stream of a corpus larger than memory works.
        vocab_size: final vocabulary size including the byte alphabet and special tokens.
        min_frequency: minimum pair count for a merge.
        length: the number of texts when ``texts`` has no ``len`` (progress only).

    Raises:
        ValueError: no text to train on.
    """
    if length is None and hasattr(texts, "__len__"):
        length = len(texts)  # type: ignore[arg-type]
    if length == 0:
        raise ValueError("tokenizer: cannot train a BPE tokenizer on an empty train split")
    counted = _Counted(texts)
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant mask relies on.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(counted, trainer, length=length)
    if counted.count == 0:
        raise ValueError("tokenizer: cannot train a BPE tokenizer on an empty train split")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    logger.info("trained byte-level BPE: %d tokens on %d texts", len(tokenizer), counted.count)
    return tokenizer


class _Counted:
    """An iterable that counts what it yields (the trainer consumes it in Rust)."""

    def __init__(self, texts: Iterable[str]) -> None:
        self.texts, self.count = texts, 0

    def __iter__(self) -> Iterator[str]:
        for text in self.texts:
            self.count += 1
            yield text


def token_byte_lengths(tokenizer: PreTrainedTokenizerBase) -> np.ndarray:
    """UTF-8 bytes each token id stands for: ``(len(tokenizer),)`` int64 (bits per byte).

    * Byte-level BPE (GPT-2, ours, Llama 3, Qwen: a ``ByteLevel`` decoder): exact. Every
      character of a token's string is one byte through GPT-2's byte-to-unicode alphabet, so
      the lengths of a text's ids sum to ``len(text.encode("utf-8"))``.
    * Special tokens (and ids without a token): 0, they stand for no text.
    * Added tokens that are not special: the UTF-8 length of their content.
    * Other tokenizers (SentencePiece, WordPiece, ...): ``len(decode([id]).encode())``, an
      approximation: a word-start marker decodes to a space or to nothing depending on the
      tokenizer, and a byte-fallback token that is part of a multi-byte character decodes to
      U+FFFD (3 bytes), so sums over a text can differ from its byte length by a few percent.
    """
    size = len(tokenizer)
    lengths = np.zeros(size, dtype=np.int64)
    added = dict(getattr(tokenizer, "added_tokens_decoder", {}) or {})
    special = set(tokenizer.all_special_ids) | {i for i, t in added.items() if t.special}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and isinstance(backend.decoder, decoders.ByteLevel)
    if byte_level:
        from transformers.convert_slow_tokenizer import bytes_to_unicode

        byte_of = {char: byte for byte, char in bytes_to_unicode().items()}
        tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    for token_id in range(size):
        if token_id in special:
            continue
        if token_id in added:
            lengths[token_id] = len(added[token_id].content.encode("utf-8"))
        elif byte_level:
            token = tokens[token_id]
            if token is not None:
                lengths[token_id] = sum(1 if c in byte_of else len(c.encode()) for c in token)
        else:
            text = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
            lengths[token_id] = len(text.encode("utf-8"))
    return lengths


def load_pretrained_tokenizer(
    name_or_path: str, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` with a pad token guaranteed."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_saved_tokenizer(folder: str | Path, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer folder written by ``save_pretrained`` (local files only).

    Our own BPE is a plain ``PreTrainedTokenizerFast``; loading it as such skips
    ``AutoTokenizer``, whose import pulls in torch through the model configs (about 1.5 s of a
    warm ``kedro run``). Any other class goes through ``AutoTokenizer``.
    """
    config_file = Path(folder) / "tokenizer_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("tokenizer_class") == PreTrainedTokenizerFast.__name__:
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(
        str(folder), trust_remote_code=trust_remote_code, local_files_only=True
    )


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``tokenizer`` a pad token: its EOS when it has one, else a new ``<|pad|>``.

    Reusing EOS keeps the vocabulary (and so the model's embedding) unchanged; padded positions
    are masked by ``attention_mask`` and ``labels == -100`` anyway.
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        logger.warning("tokenizer had no pad or eos token: added %s (vocab grew)", PAD_TOKEN)


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a chat template ours (needed by instruction mode)."""
    if tokenizer.chat_template is None:
        logger.warning("tokenizer %r has no chat template: using ours", tokenizer.name_or_path)
        tokenizer.chat_template = CHAT_TEMPLATE


def has_generation_tags(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template marks assistant turns with ``{% generation %}``."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one is used
        template = template.get("default")
    return isinstance(template, str) and bool(_GENERATION_TAG.search(template))
