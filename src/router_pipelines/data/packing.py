"""Tokenize examples into fixed-length rows of ``input_ids``, ``labels``, ``attention_mask``.

* Pretraining: documents are tokenized in batches, each followed by EOS, concatenated and cut
  into ``seq_len`` blocks; the ragged tail is dropped. Every position is attended and labelled.
  The streaming pipeline does this chunk by chunk (:class:`~.encoding.BlockPacker`);
  :func:`pack_documents` is the same on an in-memory list.
* Instruction: each chat goes through the tokenizer's chat template; labels keep only assistant
  tokens (the rest is ``-100``); each row is truncated or right-padded to ``seq_len`` with
  ``attention_mask`` 0 and label ``-100`` on padding.

Labels equal ``input_ids`` wherever they are not masked: the model shifts them internally
(Hugging Face convention). Rows are ``(N, T)`` int64 arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from router_pipelines.constants import IGNORE_INDEX
from router_pipelines.data.encoding import BlockPacker, TextEncoder, flatten_with_eos
from router_pipelines.data.tokenizer import has_generation_tags

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["IGNORE_INDEX", "encode_conversations", "pack_documents"]

COLUMNS = ("input_ids", "labels", "attention_mask")
Chat = Sequence[Mapping[str, str]]
Rows = tuple[np.ndarray, np.ndarray, np.ndarray]  # input_ids, labels, attention_mask: (N, T)


def pack_documents(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    seq_len: int,
    batch_size: int = 1024,
    name: str = "texts",
) -> np.ndarray:
    """Concatenate ``doc + EOS`` for every text and cut into blocks of ``seq_len`` tokens.

    Returns:
        ``(n_blocks, seq_len)`` int64 token ids; as labels they are the same, and every
        position is attended.

    Raises:
        ValueError: the tokenizer has no EOS token, or the texts make less than one block.
    """
    eos = require_eos(tokenizer)
    encoder = TextEncoder(tokenizer)
    packer = BlockPacker(seq_len, np.dtype(np.int64))
    blocks = [
        packer.add(flat_ids(encoder, texts[start : start + batch_size], eos))
        for start in range(0, len(texts), batch_size)
    ]
    if not blocks or sum(len(b) for b in blocks) == 0:
        raise ValueError(too_few_tokens(name, len(texts), packer.tokens, seq_len))
    return np.concatenate(blocks)  # (N, T)


def flat_ids(encoder: TextEncoder, texts: Sequence[str], eos: int) -> np.ndarray:
    """``doc + EOS`` ids of ``texts``, concatenated, int64."""
    return flatten_with_eos(encoder(list(texts)), eos, np.dtype(np.int64))


def require_eos(tokenizer: PreTrainedTokenizerBase) -> int:
    """The EOS id that joins documents.

    Raises:
        ValueError: the tokenizer has none.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no eos_token to join documents")
    return eos


def too_few_tokens(name: str, documents: int, tokens: int, seq_len: int) -> str:
    """The message for a split that gives less than one block."""
    return (
        f"seq_len: the {name} ({documents} document(s)) gives {tokens} tokens, fewer "
        f"than one block of seq_len={seq_len}; lower seq_len or give it more data"
    )


def check_instruction_tokenizer(tokenizer: PreTrainedTokenizerBase) -> None:
    """Instruction mode needs a fast tokenizer (offsets), a chat template and a pad token.

    Raises:
        ValueError: naming the tokenizer and what it lacks.
    """
    name = tokenizer.name_or_path
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {name!r}: instruction mode needs a fast tokenizer")
    if tokenizer.chat_template is None:
        raise ValueError(f"tokenizer {name!r} has no chat template for instruction mode")
    if tokenizer.pad_token_id is None:
        raise ValueError(f"tokenizer {name!r} has no pad token")


def encode_conversations(
    tokenizer: PreTrainedTokenizerBase,
    conversations: Sequence[Chat],
    seq_len: int,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """Apply the chat template and keep labels on assistant tokens only.

    Conversations longer than ``seq_len`` are truncated (the start is kept); those left with
    no assistant token are dropped, since they would give a batch row with nothing to learn.

    Returns:
        ``(input_ids, labels, attention_mask, n_truncated, n_dropped)``: ``(N, T)`` int64
        rows right-padded with ``pad_token_id``, ``attention_mask`` 0 and label ``-100`` on
        padding.

    Raises:
        ValueError: see :func:`check_instruction_tokenizer`.
    """
    check_instruction_tokenizer(tokenizer)
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
    input_ids = np.full((len(kept_ids), seq_len), tokenizer.pad_token_id, dtype=np.int64)
    labels = np.full_like(input_ids, IGNORE_INDEX)
    attention = np.zeros_like(input_ids)
    for row, (ids, mask) in enumerate(zip(kept_ids, kept_masks, strict=True)):
        ids_array = np.asarray(ids, dtype=np.int64)
        input_ids[row, : len(ids)] = ids_array
        labels[row, : len(ids)] = np.where(np.asarray(mask, dtype=bool), ids_array, IGNORE_INDEX)
        attention[row, : len(ids)] = 1
    return input_ids, labels, attention, truncated, dropped


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
