"""Token cache: fingerprints, warm reuse without reading the corpus, rebuilds, atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from data_helpers import corpus_texts

from router_pipelines.data import cache, prepare
from router_pipelines.data.cache import digest_path, fingerprint
from router_pipelines.data.prepare import choose_splits, fingerprint_inputs, prepare_token_data
from router_pipelines.data.sources import scan_corpus
from router_pipelines.data.token_store import SplitWriter
from router_pipelines.data.tokenizer import CHAT_TEMPLATE

SMALL = {"seq_len": 16, "tokenizer": {"vocab_size": 300}, "validation_fraction": 0.1}
CHAT = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]


@pytest.fixture
def corpus_file(write_jsonl):
    return write_jsonl([{"text": t} for t in corpus_texts(30)])


@pytest.fixture
def split_of(make_cfg):
    """``(CorpusSplit, cfg)`` of a file under settings ``SMALL`` + overrides."""

    def make(path, **overrides):
        cfg = make_cfg(**{**SMALL, **overrides})
        return choose_splits(scan_corpus(path, cfg), cfg), cfg

    return make


@pytest.fixture
def counted(monkeypatch):
    """Count the tokenizer trainings and store writes the cache may skip."""
    calls = {"train": 0, "stores": 0}
    train, stores = prepare.train_bpe_tokenizer, prepare.write_token_stores

    def counting_train(*args, **kwargs):
        calls["train"] += 1
        return train(*args, **kwargs)

    def counting_stores(*args, **kwargs):
        calls["stores"] += 1
        return stores(*args, **kwargs)

    monkeypatch.setattr(prepare, "train_bpe_tokenizer", counting_train)
    monkeypatch.setattr(prepare, "write_token_stores", counting_stores)
    return calls


def _entries(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_fingerprint_is_stable_and_order_free():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert len(fingerprint({})) == 64
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


@pytest.mark.parametrize(
    "change",
    [
        {"seq_len": 32},
        {"mode": "instruction"},
        {"seed": 1},
        {"max_records": 10},
        {"validation_fraction": 0.2},
        {"text_field": ["text", "other"]},
        {"tokenizer": {"vocab_size": 301}},
        {"tokenizer": {"vocab_size": 300, "min_frequency": 3}},
        {"tokenizer": {"name_or_path": "gpt2"}},
    ],
)
def test_each_setting_changes_the_fingerprint(write_jsonl, split_of, change):
    path = write_jsonl([{"text": t, "other": "x", "messages": CHAT} for t in corpus_texts(30)])
    base = fingerprint(fingerprint_inputs(*split_of(path)))
    assert fingerprint(fingerprint_inputs(*split_of(path))) == base
    assert fingerprint(fingerprint_inputs(*split_of(path, num_proc=2))) == base  # same result
    assert fingerprint(fingerprint_inputs(*split_of(path, **change))) != base


def test_file_content_changes_the_fingerprint(write_jsonl, split_of):
    texts = corpus_texts(30)
    base = fingerprint(fingerprint_inputs(*split_of(write_jsonl([{"text": t} for t in texts]))))
    edited = write_jsonl([{"text": t} for t in [texts[0] + "!", *texts[1:]]], name="b.jsonl")
    assert fingerprint(fingerprint_inputs(*split_of(edited))) != base


def test_digest_path_follows_file_bytes(tmp_path):
    (tmp_path / "tok").mkdir()
    file = tmp_path / "tok" / "tokenizer.json"
    file.write_text("{}")
    before = digest_path(tmp_path / "tok")
    file.write_text("{ }")
    assert digest_path(tmp_path / "tok") != before
    assert digest_path(file) != before


def test_warm_run_reads_only_the_entry(corpus_file, split_of, tmp_path, counted, monkeypatch):
    split, cfg = split_of(corpus_file, cache_dir=str(tmp_path / "cache"))
    cold = prepare_token_data(split, cfg)
    assert not cold.cache_hit and counted == {"train": 1, "stores": 1}

    def no_reading(*args, **kwargs):
        raise AssertionError("a cache hit must not read the corpus")

    monkeypatch.setattr(prepare, "iter_examples", no_reading)
    warm = prepare_token_data(split, cfg)
    assert warm.cache_hit and counted == {"train": 1, "stores": 1}  # nothing rebuilt
    assert warm.fingerprint == cold.fingerprint == warm.train.fingerprint
    assert isinstance(warm.train.input_ids, np.memmap)
    np.testing.assert_array_equal(warm.train.input_ids, cold.train.input_ids)
    np.testing.assert_array_equal(warm.validation.labels, cold.validation.labels)
    assert warm.tokenizer.get_vocab() == cold.tokenizer.get_vocab()
    assert warm.tokenizer.pad_token == "<|pad|>"
    meta = json.loads((tmp_path / "cache" / cold.fingerprint / "meta.json").read_text())
    assert meta["fingerprint"] == cold.fingerprint
    assert meta["inputs"]["seq_len"] == 16
    assert meta["counts"]["train"]["rows"] == len(cold.train)
    assert meta["created"].endswith("Z")


def test_changed_seq_len_or_content_rebuilds(corpus_file, write_jsonl, split_of, tmp_path, counted):
    split, cfg = split_of(corpus_file, cache_dir=str(tmp_path / "cache"))
    prepare_token_data(split, cfg)
    longer = prepare_token_data(
        *split_of(corpus_file, seq_len=24, cache_dir=str(tmp_path / "cache"))
    )
    assert not longer.cache_hit and counted["train"] == 2
    assert longer.train.seq_len == 24
    edited = write_jsonl([{"text": t + " More."} for t in corpus_texts(30)], name="edited.jsonl")
    assert not prepare_token_data(*split_of(edited, cache_dir=str(tmp_path / "cache"))).cache_hit
    assert counted["train"] == 3
    assert len(_entries(tmp_path / "cache")) == 3


def test_a_crash_while_sealing_leaves_no_entry(corpus_file, split_of, tmp_path, monkeypatch):
    split, cfg = split_of(corpus_file, cache_dir=str(tmp_path / "cache"))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(cache, "_write_meta", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_token_data(split, cfg)
    assert _entries(tmp_path / "cache") == []  # neither the entry nor its staging folder
    monkeypatch.undo()
    assert not prepare_token_data(split, cfg).cache_hit


def test_a_build_killed_part_way_leaves_no_entry(corpus_file, split_of, tmp_path, monkeypatch):
    split, cfg = split_of(corpus_file, cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(prepare, "CHUNK_RECORDS", {"pretraining": 3, "instruction": 3})
    appended = []
    original = SplitWriter.append

    def killed_on_third_chunk(self, *args, **kwargs):
        appended.append(self.folder.name)
        if len(appended) == 3:
            raise KeyboardInterrupt("killed mid-stream")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SplitWriter, "append", killed_on_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        prepare_token_data(split, cfg)
    assert _entries(tmp_path / "cache") == []
    monkeypatch.undo()
    fresh = prepare_token_data(split, cfg)
    assert not fresh.cache_hit and len(fresh.train) > 0


def test_entry_with_a_foreign_or_old_meta_is_ignored(corpus_file, split_of, tmp_path):
    split, cfg = split_of(corpus_file, cache_dir=str(tmp_path / "cache"))
    key = prepare_token_data(split, cfg).fingerprint
    meta_path = tmp_path / "cache" / key / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "fingerprint": "something else"}))
    assert cache.load_entry(tmp_path / "cache", key) is None
    meta_path.write_text(json.dumps({**meta, "store_format": 1}))  # a parquet-era entry
    assert cache.load_entry(tmp_path / "cache", key) is None
    rebuilt = prepare_token_data(split, cfg)  # replaces the stale entry
    assert not rebuilt.cache_hit and cache.load_entry(tmp_path / "cache", key) is not None


def test_empty_validation_split_round_trips(corpus_file, split_of, tmp_path):
    split, cfg = split_of(corpus_file, validation_fraction=0.0, cache_dir=str(tmp_path / "cache"))
    cold = prepare_token_data(split, cfg)
    warm = prepare_token_data(split, cfg)
    assert warm.cache_hit and len(warm.validation) == len(cold.validation) == 0
    assert warm.validation.seq_len == 16


def test_a_validation_split_without_a_block_is_refused_before_any_entry(
    write_jsonl, split_of, tmp_path
):
    path = write_jsonl([{"text": t} for t in corpus_texts(30)])
    split, cfg = split_of(
        path, validation_fraction=0.04, seq_len=200, cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ValueError) as err:
        prepare_token_data(split, cfg)
    message = str(err.value)
    assert message.startswith("data.validation_fraction / data.seq_len: the validation split (1")
    assert "seq_len=200" in message
    assert _entries(tmp_path / "cache") == []


def test_too_little_text_for_one_train_block(write_jsonl, split_of, tmp_path):
    path = write_jsonl([{"text": "hi there"}, {"text": "and more"}])
    split, cfg = split_of(
        path, validation_fraction=0.0, seq_len=64, cache_dir=str(tmp_path / "cache")
    )
    with pytest.raises(ValueError, match=r"^data\.seq_len: the train split \(2 document\(s\)\)"):
        prepare_token_data(split, cfg)
    assert _entries(tmp_path / "cache") == []


def test_pretrained_tokenizer_by_path_is_loaded_not_trained(
    corpus_file, split_of, tmp_path, counted, bpe_tokenizer
):
    folder = tmp_path / "pretrained"
    bpe_tokenizer.save_pretrained(folder)
    split, cfg = split_of(
        corpus_file, tokenizer={"name_or_path": str(folder)}, cache_dir=str(tmp_path / "c")
    )
    result = prepare_token_data(split, cfg)
    assert counted["train"] == 0
    assert result.tokenizer.get_vocab() == bpe_tokenizer.get_vocab()
    assert result.meta["inputs"]["tokenizer"]["files"] == digest_path(folder)


def test_pretrained_tokenizer_without_template_gets_ours_in_instruction_mode(
    write_jsonl, split_of, tmp_path, bpe_tokenizer
):
    folder = tmp_path / "no_template"
    bpe_tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink()
    path = write_jsonl([{"messages": CHAT}] * 3)
    split, cfg = split_of(
        path,
        mode="instruction",
        seq_len=32,
        validation_fraction=0.0,
        tokenizer={"name_or_path": str(folder)},
        cache_dir=str(tmp_path / "c"),
    )
    result = prepare_token_data(split, cfg)
    assert result.tokenizer.chat_template == CHAT_TEMPLATE
    assert len(result.train) == 3
