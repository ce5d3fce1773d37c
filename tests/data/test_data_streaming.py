"""Streaming ingest: same records and blocks as the in-memory path, bounded memory, num_proc."""

from __future__ import annotations

import itertools
import json
import operator
import tracemalloc

import numpy as np
import pytest
from data_helpers import SENTENCES, corpus_texts

from router_pipelines.data import prepare
from router_pipelines.data.encoding import ordered_map
from router_pipelines.data.packing import encode_conversations, pack_documents
from router_pipelines.data.prepare import choose_splits, prepare_token_data, split_examples
from router_pipelines.data.sampling import TRAIN, VALIDATION, subsample, train_validation_split
from router_pipelines.data.sources import iter_examples, read_records, scan_corpus
from router_pipelines.data.tokenizer import train_bpe_tokenizer
from router_pipelines.data.validation import DataValidationError, decode_lines

SMALL = {"seq_len": 16, "tokenizer": {"vocab_size": 300}, "validation_fraction": 0.2}


def _chats(n: int) -> list[dict]:
    """Chats whose answers grow from 1 to 9 words (some exceed a short seq_len)."""
    chats = []
    for i in range(n):
        question = f"Q{i}?"
        answer = " ".join(SENTENCES[(i + 1) % 6].split()[: 1 + i % 9])
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        chats.append({"messages": turns})
    return chats


def _write_big_jsonl(path, target_bytes: int) -> int:
    """Deterministic English-like JSONL of about ``target_bytes``; returns the record count."""
    words = " ".join(SENTENCES).split()
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        while handle.tell() < target_bytes:
            text = " ".join(words[(count * 7 + k) % len(words)] for k in range(200 + count % 50))
            handle.write(json.dumps({"text": f"Doc {count}. {text}"}) + "\n")
            count += 1
    return count


@pytest.mark.parametrize(
    "data",
    [b"", b"\n", b"a\nb", b"a\nb\n", b"a\r\n\n\nb\n\n", b"\xef\xbb\xbfone\r\ntwo", b"ok\n\xff\n"],
)
def test_file_lines_decode_like_bytes(tmp_path, data):
    path = tmp_path / "lines.txt"
    path.write_bytes(data)
    with path.open("rb") as handle:
        assert list(decode_lines("f", handle)) == list(decode_lines("f", data))


def test_scan_counts_and_hashes_and_later_passes_agree(write_jsonl, make_cfg):
    rows = [{"text": t} for t in corpus_texts(12)]
    path = write_jsonl([*rows[:5], {"text": ""}, *rows[5:], b"\xff"])
    corpus = scan_corpus(path, make_cfg(on_invalid="skip"))
    assert (corpus.records, corpus.records_read, corpus.records_skipped) == (12, 14, 2)
    assert corpus.n_bytes == path.stat().st_size and len(corpus.sha256) == 64
    frame = read_records(path, make_cfg(on_invalid="skip"))
    assert [e["text"] for e in iter_examples(corpus)] == frame["text"].tolist()


def test_streaming_validation_names_file_and_line(write_jsonl, make_cfg):
    path = write_jsonl([{"text": "fine"}] * 30 + [{"text": 3}] + [{"text": "fine"}] + ["{"] * 25)
    with pytest.raises(DataValidationError) as err:
        scan_corpus(path, make_cfg())
    message = str(err.value)
    assert f"{path}:31: field 'text' must be a string, got int" in message
    assert f"{path}:33: invalid JSON" in message
    assert "26 invalid record(s) of 57" in message and "... and 6 more" in message


def test_a_file_changed_after_the_scan_is_noticed(write_jsonl, make_cfg):
    path = write_jsonl([{"text": t} for t in corpus_texts(5)])
    corpus = scan_corpus(path, make_cfg())
    write_jsonl([{"text": t} for t in corpus_texts(6)])
    with pytest.raises(DataValidationError, match="changed since it was first read"):
        list(iter_examples(corpus))


def test_the_split_picks_the_records_of_the_in_memory_split(write_jsonl, make_cfg):
    path = write_jsonl([{"text": t} for t in corpus_texts(40)])
    cfg = make_cfg(max_records=25, seed=3, validation_fraction=0.2)
    split = choose_splits(scan_corpus(path, cfg), cfg)
    train, validation = train_validation_split(
        subsample(read_records(path, cfg), 25, 3), 0.2, seed=3
    )
    assert [e["text"] for e in split_examples(split, TRAIN)] == train["text"].tolist()
    assert [e["text"] for e in split_examples(split, VALIDATION)] == validation["text"].tolist()
    assert (split.n_train, split.n_validation) == (20, 5)


def test_pretraining_stores_equal_the_in_memory_pipeline(write_jsonl, make_cfg, tmp_path):
    path = write_jsonl([{"text": t} for t in corpus_texts(40)])
    cfg = make_cfg(**SMALL, max_records=30, seed=1, cache_dir=str(tmp_path / "c"))
    tokens = prepare_token_data(choose_splits(scan_corpus(path, cfg), cfg), cfg)
    # The in-memory pipeline as it was: frames, a list-trained BPE, pack everything at once.
    train, validation = train_validation_split(subsample(read_records(path, cfg), 30, 1), 0.2, 1)
    tokenizer = train_bpe_tokenizer(train["text"].tolist(), 300, 2)
    assert tokens.tokenizer.get_vocab() == tokenizer.get_vocab()
    for blocks, frame, name in (
        (tokens.train, train, "train"),
        (tokens.validation, validation, "v"),
    ):
        expected = pack_documents(tokenizer, frame["text"].tolist(), 16, name=name)
        np.testing.assert_array_equal(blocks.input_ids, expected)
        np.testing.assert_array_equal(blocks.labels, expected)
        assert blocks.num_tokens == expected.size


def test_instruction_stores_equal_the_in_memory_pipeline(write_jsonl, make_cfg, tmp_path):
    path = write_jsonl(_chats(30))
    cfg = make_cfg(**{**SMALL, "seq_len": 24}, mode="instruction", cache_dir=str(tmp_path / "c"))
    tokens = prepare_token_data(choose_splits(scan_corpus(path, cfg), cfg), cfg)
    train, validation = train_validation_split(read_records(path, cfg), 0.2, 42)
    for blocks, frame in ((tokens.train, train), (tokens.validation, validation)):
        ids, labels, mask, _, _ = encode_conversations(
            tokens.tokenizer, frame["messages"].tolist(), 24
        )
        np.testing.assert_array_equal(blocks.input_ids, ids)
        np.testing.assert_array_equal(blocks.labels, labels)
        np.testing.assert_array_equal(blocks.attention_mask, mask)
    assert tokens.meta["counts"]["train"]["truncated"] > 0  # long chats were cut to seq_len


@pytest.mark.parametrize(
    "mode", ["pretraining", pytest.param("instruction", marks=pytest.mark.slow)]
)
def test_num_proc_gives_identical_stores(write_jsonl, make_cfg, tmp_path, monkeypatch, mode):
    rows = _chats(60) if mode == "instruction" else [{"text": t} for t in corpus_texts(60)]
    path = write_jsonl(rows)
    monkeypatch.setattr(prepare, "CHUNK_RECORDS", {"pretraining": 7, "instruction": 7})
    results = []
    for num_proc in (1, 2):
        cfg = make_cfg(
            **SMALL, mode=mode, num_proc=num_proc, cache_dir=str(tmp_path / f"{num_proc}")
        )
        results.append(prepare_token_data(choose_splits(scan_corpus(path, cfg), cfg), cfg))
    one, two = results
    assert one.fingerprint == two.fingerprint and not two.cache_hit
    assert two.meta["num_proc"] == 2
    for name in ("train", "validation"):
        a, b = getattr(one, name), getattr(two, name)
        assert len(a) > 0
        for array in ("input_ids", "labels", "attention_mask"):
            np.testing.assert_array_equal(getattr(a, array), getattr(b, array))


def test_ordered_map_keeps_order_and_bounds_what_is_in_flight():
    pulled = []

    def items():
        for value in range(-30, 0):
            pulled.append(value)
            yield value

    results = ordered_map(operator.neg, items(), num_proc=2, max_pending=3)
    assert next(results) == 30
    assert len(pulled) == 3  # only max_pending chunks were taken from the input
    assert list(results) == list(range(29, 0, -1))
    assert list(ordered_map(operator.neg, [1, 2], num_proc=1)) == [-1, -2]


def test_a_failing_worker_raises_in_the_parent():
    with pytest.raises(TypeError):
        list(ordered_map(operator.neg, [1, "not a number", 3], num_proc=2))


def test_ingest_and_split_stay_in_bounded_memory(tmp_path, make_cfg):
    path = tmp_path / "big.jsonl"
    records = _write_big_jsonl(path, 24_000_000)
    cfg = make_cfg(max_records=records // 2, validation_fraction=0.01)
    tracemalloc.start()
    try:
        corpus = scan_corpus(path, cfg)
        split = choose_splits(corpus, cfg)
        seen = sum(1 for _ in itertools.chain(iter_examples(corpus)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert corpus.records == seen == records and split.n_train + split.n_validation == records // 2
    assert peak < path.stat().st_size / 20, f"peak {peak / 1e6:.1f} MB for a 24 MB file"


def test_tokenizing_stays_in_bounded_memory(tmp_path, make_cfg, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    path = tmp_path / "big.jsonl"
    _write_big_jsonl(path, 12_000_000)
    words = sorted(set(" ".join(SENTENCES).split()) | {"Doc"})
    vocab = {"<eos>": 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(words)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    folder = tmp_path / "word_level"
    PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>").save_pretrained(folder)
    monkeypatch.setattr(prepare, "CHUNK_CHARS", 400_000)
    cfg = make_cfg(
        seq_len=64,
        validation_fraction=0.01,
        tokenizer={"name_or_path": str(folder)},
        cache_dir=str(tmp_path / "cache"),
    )
    split = choose_splits(scan_corpus(path, cfg), cfg)
    tracemalloc.start()
    try:
        tokens = prepare_token_data(split, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    store_bytes = tokens.train.input_ids.nbytes
    assert store_bytes > 3_000_000  # millions of tokens went to disk ...
    assert peak < 6_000_000, f"peak {peak / 1e6:.1f} MB"  # ... through a few chunks in memory
