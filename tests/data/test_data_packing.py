"""Pretraining packing and instruction masking, checked token by token."""

from __future__ import annotations

import copy
import itertools
import pickle

import numpy as np
import pytest
from data_helpers import corpus_texts

from router_pipelines.data.encoding import BlockPacker, TextEncoder
from router_pipelines.data.packing import (
    IGNORE_INDEX,
    assistant_masks,
    assistant_masks_from_tags,
    encode_conversations,
    pack_documents,
)
from router_pipelines.data.tokenizer import has_generation_tags

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is a tuple?"},
    {"role": "assistant", "content": "An immutable sequence."},
]


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _expected_chat(tokenizer, chat) -> tuple[list[int], list[int]]:
    """Ids and labels built piece by piece from the template's layout (independent of it)."""
    ids, labels = [], []
    for message in chat:
        head = _ids(tokenizer, f"<|{message['role']}|>") + _ids(tokenizer, "\n")
        body = _ids(tokenizer, message["content"]) + [tokenizer.eos_token_id]
        tail = _ids(tokenizer, "\n")
        learn = message["role"] == "assistant"
        ids += head + body + tail
        labels += [IGNORE_INDEX] * len(head) + (body if learn else [IGNORE_INDEX] * len(body))
        labels += [IGNORE_INDEX] * len(tail)
    return ids, labels


def test_pretraining_blocks_are_documents_joined_by_eos(bpe_tokenizer):
    texts = corpus_texts(5)
    seq_len = 16
    blocks = pack_documents(bpe_tokenizer, texts, seq_len)
    flat = list(
        itertools.chain.from_iterable(
            _ids(bpe_tokenizer, t) + [bpe_tokenizer.eos_token_id] for t in texts
        )
    )
    n_blocks = len(flat) // seq_len
    assert blocks.shape == (n_blocks, seq_len) and n_blocks > 1
    assert blocks.dtype == np.int64
    for row in range(n_blocks):
        assert blocks[row].tolist() == flat[row * seq_len : (row + 1) * seq_len]


def test_packing_chunk_by_chunk_equals_packing_everything(bpe_tokenizer):
    texts = corpus_texts(12)
    whole = pack_documents(bpe_tokenizer, texts, 16)
    packer = BlockPacker(16, np.dtype(np.uint16))
    encoder, eos = TextEncoder(bpe_tokenizer), bpe_tokenizer.eos_token_id
    parts = []
    for size in (1, 4, 2, 5):  # uneven chunks: blocks straddle chunk boundaries
        chunk, texts = texts[:size], texts[size:]
        flat = [t for ids in encoder(chunk) for t in [*ids, eos]]
        parts.append(packer.add(np.asarray(flat, dtype=np.uint16)))
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    assert 0 < packer.carry.size < 16  # the ragged tail waits, then is dropped


def test_text_encoder_matches_the_tokenizer_and_pickles(bpe_tokenizer):
    texts = ["café ünïcode ∑", "  spaces\n", "<|user|> special", ""]
    expected = bpe_tokenizer(texts, add_special_tokens=False)["input_ids"]
    encoder = TextEncoder(bpe_tokenizer)
    assert encoder(texts) == expected
    assert pickle.loads(pickle.dumps(encoder))(texts) == expected


def test_pretraining_tokenizes_in_batches(bpe_tokenizer, monkeypatch):
    calls = []
    original = TextEncoder.__call__

    def spy(self, texts):
        calls.append(len(texts))
        return original(self, texts)

    monkeypatch.setattr(TextEncoder, "__call__", spy)
    pack_documents(bpe_tokenizer, corpus_texts(10), 8, batch_size=4)
    assert calls == [4, 4, 2]


def test_too_little_text_for_one_block(bpe_tokenizer):
    with pytest.raises(ValueError, match=r"seq_len: the validation split \(1 document\(s\)\)"):
        pack_documents(bpe_tokenizer, ["hi"], 64, name="validation split")


def test_instruction_labels_keep_only_assistant_tokens(bpe_tokenizer):
    ids, labels = _expected_chat(bpe_tokenizer, CHAT)
    seq_len = len(ids) + 5
    rows, label_rows, mask, truncated, dropped = encode_conversations(
        bpe_tokenizer, [CHAT], seq_len
    )
    pad = bpe_tokenizer.pad_token_id
    assert rows.dtype == label_rows.dtype == mask.dtype == np.int64
    assert rows[0].tolist() == ids + [pad] * 5
    assert label_rows[0].tolist() == labels + [IGNORE_INDEX] * 5
    assert mask[0].tolist() == [1] * len(ids) + [0] * 5
    learned = [t for t in label_rows[0].tolist() if t != IGNORE_INDEX]
    assert bpe_tokenizer.decode(learned) == "An immutable sequence.<|endoftext|>"
    assert (truncated, dropped) == (0, 0)


def test_every_assistant_turn_is_learned(bpe_tokenizer):
    chat = [
        {"role": "user", "content": "One?"},
        {"role": "assistant", "content": "Yes."},
        {"role": "user", "content": "Two?"},
        {"role": "assistant", "content": "No."},
    ]
    ids, labels = _expected_chat(bpe_tokenizer, chat)
    _, label_rows, _, _, _ = encode_conversations(bpe_tokenizer, [chat], len(ids))
    assert label_rows[0].tolist() == labels
    learned = [t for t in labels if t != IGNORE_INDEX]
    assert bpe_tokenizer.decode(learned) == "Yes.<|endoftext|>No.<|endoftext|>"


def test_fallback_without_generation_tags_gives_the_same_masks(bpe_tokenizer):
    chats = [CHAT, CHAT[1:] + [{"role": "user", "content": "More?"}, CHAT[2]]]
    tagged = assistant_masks_from_tags(bpe_tokenizer, chats)
    untagged = copy.deepcopy(bpe_tokenizer)
    for tag in ("{%- generation -%}", "{%- endgeneration -%}"):
        untagged.chat_template = untagged.chat_template.replace(tag, "")
    assert not has_generation_tags(untagged)
    assert assistant_masks(untagged, chats) == tagged
    _, label_rows, _, _, _ = encode_conversations(untagged, [CHAT], 64)
    ids, labels = _expected_chat(bpe_tokenizer, CHAT)
    assert label_rows[0][: len(labels)].tolist() == labels


def test_truncation_and_dropping(bpe_tokenizer):
    ids, labels = _expected_chat(bpe_tokenizer, CHAT)
    first_learned = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    keep = first_learned + 2  # cut inside the answer: truncated, still learns 2 tokens
    rows, label_rows, _, truncated, dropped = encode_conversations(bpe_tokenizer, [CHAT], keep)
    assert (truncated, dropped) == (1, 0)
    assert rows[0].tolist() == ids[:keep]
    assert label_rows[0].tolist() == labels[:keep]
    rows, *_, truncated, dropped = encode_conversations(bpe_tokenizer, [CHAT], first_learned)
    assert (len(rows), truncated, dropped) == (0, 1, 1)  # nothing left to learn


def test_fallback_with_a_foreign_chatml_template(bpe_tokenizer):
    chatml = copy.deepcopy(bpe_tokenizer)
    chatml.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    _, label_rows, _, truncated, _ = encode_conversations(chatml, [CHAT], 200)
    assert truncated == 0
    learned = [t for t in label_rows[0].tolist() if t != IGNORE_INDEX]
    assert chatml.decode(learned) == "An immutable sequence.<|im_end|>"
