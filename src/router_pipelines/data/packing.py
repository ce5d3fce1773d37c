"""Tokenize records into fixed-length rows of ``input_ids``, ``labels``, ``attention_mask``.

* Pretraining: documents are tokenized in batches, each followed by EOS, concatenated and cut
  into ``seq_len`` blocks; the ragged tail is dropped. Every position is attended and labelled.
* Instruction: each chat goes through the tokenizer's chat template; labels keep only assistant
  tokens (the rest is ``-100``); each row is truncated or right-padded to ``seq_len`` with
  ``attention_mask`` 0 and label ``-100`` on padding.

Labels equal ``input_ids`` wherever they are not masked: the model shifts them internally
(Hugging Face convention).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from transformers import PreTrainedTokenizerBase

from router_pipelines.data.tokenizer import has_generation_tags

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
COLUMNS = ("input_ids", "labels", "attention_mask")
Chat = Sequence[Mapping[str, str]]


def tokenize_records(
    tokenizer: PreTrainedTokenizerBase,
    records: pd.DataFrame,
    mode: str,
    seq_len: int,
    name: str = "records",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Tokenize a record frame (``text`` or ``messages`` column) for ``mode``.

    ``name`` (e.g. ``"validation split"``) is used in error messages.

    Returns:
        ``(rows, stats)``: rows as in :func:`pack_documents` / :func:`encode_conversations`;
        stats counts examples, rows, attended tokens, supervised tokens, truncated and dropped
        examples.
    """
    if len(records) == 0:  # e.g. validation_fraction 0
        empty = np.zeros((0, seq_len), dtype=np.int64)
        frame = _frame(empty, empty, empty)
        truncated = dropped = 0
    elif mode == "pretraining":
        frame = pack_documents(tokenizer, records["text"].tolist(), seq_len, name=name)
        truncated = dropped = 0
    elif mode == "instruction":
        frame, truncated, dropped = encode_conversations(
            tokenizer, records["messages"].tolist(), seq_len
        )
    else:
        raise ValueError(f"mode: {mode!r} is not allowed; choose one of pretraining, instruction")
    labels = np.asarray(frame["labels"].tolist(), dtype=np.int64).reshape(len(frame), seq_len)
    attention = np.asarray(frame["attention_mask"].tolist(), dtype=np.int64)
    stats = {
        "examples": len(records),
        "rows": len(frame),
        "tokens": int(attention.sum()),
        "supervised_tokens": int((labels != IGNORE_INDEX).sum()),
        "truncated": truncated,
        "dropped": dropped,
    }
    return frame, stats


def pack_documents(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    seq_len: int,
    batch_size: int = 1024,
    name: str = "texts",
) -> pd.DataFrame:
    """Concatenate ``doc + EOS`` for every text and cut into blocks of ``seq_len`` tokens.

    Returns:
        ``n_blocks`` rows; each column holds lists of ``seq_len`` ints. ``labels`` equal
        ``input_ids``; ``attention_mask`` is all ones.

    Raises:
        ValueError: the tokenizer has no EOS token, or the texts make less than one block.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token to join documents")
    pieces = []
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            pieces.append(ids)
            pieces.append((eos,))
    flat = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64)
    n_blocks = len(flat) // seq_len
    if n_blocks == 0:
        raise ValueError(
            f"seq_len: the {name} ({len(texts)} document(s)) gives {len(flat)} tokens, fewer "
            f"than one block of seq_len={seq_len}; lower seq_len or give it more data"
        )
    blocks = flat[: n_blocks * seq_len].reshape(n_blocks, seq_len)  # (N, T)
    return _frame(blocks, blocks.copy(), np.ones_like(blocks))


def encode_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Chat],
    seq_len: int,
    batch_size: int = 256,
) -> tuple[pd.DataFrame, int, int]:
    """Apply the chat template and keep labels on assistant tokens only.

    Conversations longer than ``seq_len`` are truncated (the start is kept); those left with
    no assistant token are dropped, since they would give a batch row with nothing to learn.

    Returns:
        ``(rows, n_truncated, n_dropped)``; rows as in :func:`pack_documents` but right-padded
        with ``pad_token_id``, ``attention_mask`` 0 and label ``-100`` on padding.

    Raises:
        ValueError: the tokenizer is not fast (offsets are needed), has no chat template or no
            pad token.
    """
    name = tokenizer.name_or_path
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name!r}: instruction mode needs a fast tokenizer")
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {name!r} has no chat template for instruction mode")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {name!r} has no pad token")
    masker = assistant_masks_from_tags if has_generation_tags(tokenizer) else assistant_masks
    kept_ids, kept_masks = [], []
    truncated = dropped = 0
    for start in range(0, len(conversations), batch_size):
        batch = [list(chat) for chat in conversations[start : start + batch_size]]
        for ids, mask in zip(*masker(tokenizer, batch), strict=True):
            if len(ids) > seq_len:
                truncated += 1
                ids, mask = ids[:seq_len], mask[:seq_len]
            if not any(mask):
                dropped += 1
                continue
            kept_ids.append(ids)
            kept_masks.append(mask)
    if truncated or dropped:
        logger.warning(
            "%d of %d conversations truncated to seq_len=%d, %d dropped (no assistant token left)",
            truncated,
            len(conversations),
            seq_len,
            dropped,
        )
    input_ids = np.full((len(kept_ids), seq_len), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full_like(input_ids, IGNORE_INDEX)
    attention = np.zeros_like(input_ids)
    for row, (ids, mask) in enumerate(zip(kept_ids, kept_masks, strict=True)):
        ids_array = np.asarray(ids, dtype=np.int64)
        input_ids[row, : len(ids)] = ids_array
        labels[row, : len(ids)] = np.where(np.asarray(mask, dtype=bool), ids_array, IGNORE_INDEX)
        attention[row, : len(ids)] = 1
    return _frame(input_ids, labels, attention), truncated, dropped


def assistant_masks_from_tags(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]]
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and assistant masks from a template with ``{% generation %}`` blocks."""
    encoded = tokenizer.apply_chat_template(
        conversations, return_dict=True, return_assistant_tokens_mask=True
    )
    return encoded["input_ids"], encoded["assistant_masks"]


def assistant_masks(
    tokenizer: PreTrainedTokenizerBase, conversations: list[list[dict]]
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids and assistant masks for any chat template (fallback without generation tags).

    Each assistant turn's character span is found by rendering the conversation prefixes: the
    text before it is ``render(messages[:i], add_generation_prompt=True)`` and the text through
    it is ``render(messages[:i + 1])``. Tokens whose character offsets overlap a span are
    assistant tokens. Working on characters (not on separately tokenized prefixes) stays exact
    when BPE merges differ at a prefix boundary. Templates whose prefixes are not prefixes of the
    full text fall back to locating the message content.
    """
    texts = tokenizer.apply_chat_template(conversations, tokenize=False)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    masks = []
    for text, offsets, messages in zip(
        texts, encoded["offset_mapping"], conversations, strict=True
    ):
        spans = _assistant_char_spans(tokenizer, messages, text)
        masks.append(
            [int(a < b and any(a < end and b > start for start, end in spans)) for a, b in offsets]
        )
    return encoded["input_ids"], masks


def _assistant_char_spans(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict], text: str
) -> list[tuple[int, int]]:
    spans = []
    cursor = 0
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        through = tokenizer.apply_chat_template(messages[: index + 1], tokenize=False)
        prefix = (
            tokenizer.apply_chat_template(
                messages[:index], tokenize=False, add_generation_prompt=True
            )
            if index > 0
            else ""
        )
        if text.startswith(through) and through.startswith(prefix) and len(through) > len(prefix):
            start = len(prefix)
            end = start + len(through[start:].rstrip())  # the separator after a turn is prompt
        else:
            start = text.find(message["content"], cursor)
            if start < 0:
                continue
            end = start + len(message["content"])
        spans.append((start, end))
        cursor = end
    return spans


def _frame(input_ids: np.ndarray, labels: np.ndarray, attention: np.ndarray) -> pd.DataFrame:
    """A frame of list-of-int columns from three ``(N, T)`` arrays."""
    return pd.DataFrame(
        {
            "input_ids": input_ids.tolist(),
            "labels": labels.tolist(),
            "attention_mask": attention.tolist(),
        },
        columns=list(COLUMNS),
    )
