"""Pretraining packing and instruction masking, checked token by token."""

from __future__ import annotations

import copy
import itertools

import pandas as pd
import pytest
from data_helpers import corpus_texts

from router_pipelines.data.packing import (
    IGNORE_INDEX,
    assistant_masks,
    assistant_masks_from_tags,
    encode_conversations,
    pack_documents,
    tokenize_records,
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
    frame = pack_documents(bpe_tokenizer, texts, seq_len)
    flat = list(
        itertools.chain.from_iterable(
            _ids(bpe_tokenizer, t) + [bpe_tokenizer.eos_token_id] for t in texts
        )
    )
    n_blocks = len(flat) // seq_len
    assert len(frame) == n_blocks and n_blocks > 1
    assert list(frame.columns) == ["input_ids", "labels", "attention_mask"]
    for row in range(n_blocks):
        block = flat[row * seq_len : (row + 1) * seq_len]
        assert frame["input_ids"][row] == block
        assert frame["labels"][row] == block
        assert frame["attention_mask"][row] == [1] * seq_len
    assert all(type(v) is int for v in frame["input_ids"][0])


def test_pretraining_tokenizes_in_batches(bpe_tokenizer, monkeypatch):
    calls = []
    original = type(bpe_tokenizer).__call__

    def spy(self, text, *args, **kwargs):
        calls.append(len(text) if isinstance(text, list) else "single")
        return original(self, text, *args, **kwargs)

    monkeypatch.setattr(type(bpe_tokenizer), "__call__", spy)
    pack_documents(bpe_tokenizer, corpus_texts(10), 8, batch_size=4)
    assert calls == [4, 4, 2]


def test_too_little_text_for_one_block(bpe_tokenizer):
    with pytest.raises(ValueError, match=r"seq_len: the validation split \(1 document\(s\)\)"):
        pack_documents(bpe_tokenizer, ["hi"], 64, name="validation split")


def test_instruction_labels_keep_only_assistant_tokens(bpe_tokenizer):
    ids, labels = _expected_chat(bpe_tokenizer, CHAT)
    seq_len = len(ids) + 5
    frame, truncated, dropped = encode_conversations(bpe_tokenizer, [CHAT], seq_len)
    pad = bpe_tokenizer.pad_token_id
    assert frame["input_ids"][0] == ids + [pad] * 5
    assert frame["labels"][0] == labels + [IGNORE_INDEX] * 5
    assert frame["attention_mask"][0] == [1] * len(ids) + [0] * 5
    learned = [t for t in frame["labels"][0] if t != IGNORE_INDEX]
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
    frame, _, _ = encode_conversations(bpe_tokenizer, [chat], len(ids))
    assert frame["labels"][0] == labels
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
    frame, _, _ = encode_conversations(untagged, [CHAT], 64)
    ids, labels = _expected_chat(bpe_tokenizer, CHAT)
    assert frame["labels"][0][: len(labels)] == labels


def test_truncation_and_dropping(bpe_tokenizer):
    ids, labels = _expected_chat(bpe_tokenizer, CHAT)
    first_learned = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
    keep = first_learned + 2  # cut inside the answer: truncated, still learns 2 tokens
    frame, truncated, dropped = encode_conversations(bpe_tokenizer, [CHAT], keep)
    assert (truncated, dropped) == (1, 0)
    assert frame["input_ids"][0] == ids[:keep]
    assert frame["labels"][0] == labels[:keep]
    frame, truncated, dropped = encode_conversations(bpe_tokenizer, [CHAT], first_learned)
    assert (len(frame), truncated, dropped) == (0, 1, 1)  # nothing left to learn


def test_tokenize_records_counts(bpe_tokenizer):
    chats = pd.DataFrame({"messages": [CHAT, CHAT]})
    frame, stats = tokenize_records(bpe_tokenizer, chats, "instruction", 48)
    ids, labels = _expected_chat(bpe_tokenizer, CHAT)
    assert stats == {
        "examples": 2,
        "rows": 2,
        "tokens": 2 * len(ids),
        "supervised_tokens": 2 * sum(t != IGNORE_INDEX for t in labels),
        "truncated": 0,
        "dropped": 0,
    }
    empty, stats = tokenize_records(bpe_tokenizer, chats.iloc[:0], "instruction", 48)
    assert len(empty) == 0 and stats["rows"] == 0


def test_fallback_with_a_foreign_chatml_template(bpe_tokenizer):
    chatml = copy.deepcopy(bpe_tokenizer)
    chatml.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    frame, truncated, _ = encode_conversations(chatml, [CHAT], 200)
    assert truncated == 0
    learned = [t for t in frame["labels"][0] if t != IGNORE_INDEX]
    assert chatml.decode(learned) == "An immutable sequence.<|im_end|>"
