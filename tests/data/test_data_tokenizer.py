"""Byte-level BPE training, special tokens, chat template, save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest
from data_helpers import corpus_texts
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from router_pipelines.data.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    ensure_pad_token,
    has_generation_tags,
    token_byte_lengths,
    train_bpe_tokenizer,
)


def test_trained_tokenizer_has_the_special_tokens(bpe_tokenizer):
    assert isinstance(bpe_tokenizer, PreTrainedTokenizerFast)
    assert len(bpe_tokenizer) == 320
    assert bpe_tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [0, 1, 2, 3, 4, 5]
    assert (bpe_tokenizer.eos_token_id, bpe_tokenizer.bos_token_id) == (0, 1)
    assert bpe_tokenizer.pad_token_id == 2
    assert bpe_tokenizer.chat_template == CHAT_TEMPLATE


@pytest.mark.parametrize(
    "text",
    ["The quick brown fox.", "  leading spaces\n\ttabs and newlines\n", "café ünïcode ∑ 😀", ""],
)
def test_round_trip_is_lossless(bpe_tokenizer, text):
    ids = bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert bpe_tokenizer.decode(ids) == text


def test_special_tokens_are_single_ids(bpe_tokenizer):
    ids = bpe_tokenizer("<|user|>\nhi<|endoftext|>", add_special_tokens=False)["input_ids"]
    assert ids[0] == 4 and ids[-1] == 0


def test_training_is_deterministic():
    first = train_bpe_tokenizer(corpus_texts(), 300, 2)
    second = train_bpe_tokenizer(corpus_texts(), 300, 2)
    assert first.get_vocab() == second.get_vocab()


def test_empty_training_set_is_an_error():
    with pytest.raises(ValueError, match="empty train split"):
        train_bpe_tokenizer([], 300, 2)


def test_save_and_load_as_a_standard_folder(bpe_tokenizer, tmp_path):
    bpe_tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "tokenizer.json").is_file()
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Generators produce items lazily."
    assert loaded(text)["input_ids"] == bpe_tokenizer(text)["input_ids"]
    assert (loaded.eos_token, loaded.bos_token, loaded.pad_token) == (
        "<|endoftext|>",
        "<|bos|>",
        "<|pad|>",
    )
    assert loaded.chat_template == CHAT_TEMPLATE
    assert len(loaded) == len(bpe_tokenizer)


def test_chat_template_layout(bpe_tokenizer):
    chat = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U"},
        {"role": "assistant", "content": "A"},
    ]
    rendered = bpe_tokenizer.apply_chat_template(chat, tokenize=False)
    assert rendered == (
        "<|system|>\nS<|endoftext|>\n<|user|>\nU<|endoftext|>\n<|assistant|>\nA<|endoftext|>\n"
    )
    prompt = bpe_tokenizer.apply_chat_template(chat[:2], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|user|>\nU<|endoftext|>\n<|assistant|>\n")
    assert has_generation_tags(bpe_tokenizer)


def test_ensure_pad_token_reuses_eos_or_adds_one(tmp_path, bpe_tokenizer):
    bpe_tokenizer.save_pretrained(tmp_path)
    with_eos = AutoTokenizer.from_pretrained(tmp_path, pad_token=None)
    with_eos.pad_token = None
    ensure_pad_token(with_eos)
    assert with_eos.pad_token == "<|endoftext|>"
    bare = AutoTokenizer.from_pretrained(tmp_path)
    bare.pad_token = None
    bare.eos_token = None
    ensure_pad_token(bare)
    assert bare.pad_token == "<|pad|>" and bare.pad_token_id == 2


def test_training_from_a_stream_equals_training_from_a_list():
    streamed = train_bpe_tokenizer((text for text in corpus_texts()), 300, 2, length=40)
    assert streamed.get_vocab() == train_bpe_tokenizer(corpus_texts(), 300, 2).get_vocab()
    with pytest.raises(ValueError, match="empty train split"):
        train_bpe_tokenizer(iter([]), 300, 2)


@pytest.mark.parametrize(
    "text",
    [
        "The quick brown fox jumps over the lazy dog.",
        "  indented\n\ttabs, newlines\r\n and trailing space ",
        "café ünïcode ∑ 😀 — 日本語のテキスト",  # multi-byte characters, split into bytes
        "Document 7. Tuples are written with commas between items.",
    ],
)
def test_byte_lengths_of_a_texts_ids_sum_to_its_utf8_length(bpe_tokenizer, text):
    lengths = token_byte_lengths(bpe_tokenizer)
    ids = bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert 0 < len(ids) <= len(text.encode("utf-8"))
    assert int(lengths[ids].sum()) == len(text.encode("utf-8"))


def test_byte_lengths_table(bpe_tokenizer):
    lengths = token_byte_lengths(bpe_tokenizer)
    assert lengths.dtype == np.int64 and lengths.shape == (len(bpe_tokenizer),)
    assert lengths[: len(SPECIAL_TOKENS)].tolist() == [0] * len(SPECIAL_TOKENS)
    single_bytes = [bpe_tokenizer.convert_tokens_to_ids(c) for c in ("a", "Ġ", "Ã")]
    assert lengths[single_bytes].tolist() == [1, 1, 1]  # "Ġ" is the space byte, "Ã" 0xC3
    assert lengths.max() > 3  # merged tokens


def test_byte_lengths_of_a_non_byte_level_tokenizer_decode_each_token(char_tokenizer):
    lengths = token_byte_lengths(char_tokenizer)
    assert lengths.tolist() == [0, 0] + [1] * 26  # <pad>, <eos> are special; a..z one byte
    ids = char_tokenizer("hello", add_special_tokens=False)["input_ids"]
    assert int(lengths[ids].sum()) == 5
