"""Token cache: fingerprints, warm reuse without rebuilding, rebuild on change, atomic writes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from data_helpers import corpus_texts

from router_pipelines.data import cache, prepare
from router_pipelines.data.cache import digest_path, fingerprint
from router_pipelines.data.prepare import fingerprint_inputs, prepare_token_data
from router_pipelines.data.tokenizer import CHAT_TEMPLATE

SMALL = {"seq_len": 16, "tokenizer": {"vocab_size": 300}}


def _records(texts):
    frame = pd.DataFrame({"text": texts})
    frame.attrs["ingest"] = {"source": "mem", "records_read": len(texts), "records_skipped": 0}
    return frame


@pytest.fixture
def splits():
    texts = corpus_texts(30)
    return _records(texts[:27]), _records(texts[27:])


@pytest.fixture
def counted(monkeypatch):
    """Count calls of the tokenizer training and tokenizing functions the cache may skip."""
    calls = {"train": 0, "tokenize": 0}
    train, tokenize = prepare.train_bpe_tokenizer, prepare.tokenize_records

    def counting_train(*args, **kwargs):
        calls["train"] += 1
        return train(*args, **kwargs)

    def counting_tokenize(*args, **kwargs):
        calls["tokenize"] += 1
        return tokenize(*args, **kwargs)

    monkeypatch.setattr(prepare, "train_bpe_tokenizer", counting_train)
    monkeypatch.setattr(prepare, "tokenize_records", counting_tokenize)
    return calls


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
        {"tokenizer": {"vocab_size": 301}},
        {"tokenizer": {"vocab_size": 300, "min_frequency": 3}},
        {"tokenizer": {"name_or_path": "gpt2"}},
    ],
)
def test_each_setting_changes_the_fingerprint(make_cfg, splits, change):
    # Give the records both columns so only the setting differs between the two modes.
    train, validation = (
        frame.assign(messages=[[{"role": "user", "content": t}] for t in frame["text"]])
        for frame in splits
    )
    base = fingerprint(fingerprint_inputs(train, validation, make_cfg(**SMALL)))
    assert fingerprint(fingerprint_inputs(train, validation, make_cfg(**SMALL))) == base
    changed = make_cfg(**{**SMALL, **change})
    assert fingerprint(fingerprint_inputs(train, validation, changed)) != base


def test_record_content_and_split_change_the_fingerprint(make_cfg, splits):
    cfg = make_cfg(**SMALL)
    train, validation = splits
    base = fingerprint(fingerprint_inputs(train, validation, cfg))
    edited = train.copy()
    edited.loc[0, "text"] += "!"
    assert fingerprint(fingerprint_inputs(edited, validation, cfg)) != base
    moved = (
        _records(train["text"].tolist()[1:]),
        _records([train["text"][0], *validation["text"]]),
    )
    assert fingerprint(fingerprint_inputs(*moved, cfg)) != base


def test_digest_path_follows_file_bytes(tmp_path):
    (tmp_path / "tok").mkdir()
    file = tmp_path / "tok" / "tokenizer.json"
    file.write_text("{}")
    before = digest_path(tmp_path / "tok")
    file.write_text("{ }")
    assert digest_path(tmp_path / "tok") != before
    assert digest_path(file) != before


def test_warm_run_reuses_the_cache_without_building(make_cfg, splits, tmp_path, counted):
    cfg = make_cfg(**SMALL, cache_dir=str(tmp_path / "cache"))
    cold = prepare_token_data(*splits, cfg)
    assert not cold.cache_hit and counted == {"train": 1, "tokenize": 2}
    warm = prepare_token_data(*splits, cfg)
    assert warm.cache_hit and counted == {"train": 1, "tokenize": 2}  # nothing rebuilt
    assert warm.fingerprint == cold.fingerprint
    pd.testing.assert_frame_equal(warm.train, cold.train)
    pd.testing.assert_frame_equal(warm.validation, cold.validation)
    assert type(warm.train["input_ids"][0]) is list
    assert warm.tokenizer.get_vocab() == cold.tokenizer.get_vocab()
    assert warm.tokenizer.pad_token == "<|pad|>"
    meta = json.loads((tmp_path / "cache" / cold.fingerprint / "meta.json").read_text())
    assert meta["fingerprint"] == cold.fingerprint
    assert meta["inputs"]["seq_len"] == 16
    assert meta["counts"]["train"]["rows"] == len(cold.train)
    assert meta["created"].endswith("Z")


def test_changed_seq_len_or_content_rebuilds(make_cfg, splits, tmp_path, counted):
    cfg = make_cfg(**SMALL, cache_dir=str(tmp_path))
    prepare_token_data(*splits, cfg)
    longer = prepare_token_data(
        *splits, make_cfg(**{**SMALL, "seq_len": 24}, cache_dir=str(tmp_path))
    )
    assert not longer.cache_hit and counted["train"] == 2
    assert len(longer.train["input_ids"][0]) == 24
    train, validation = splits
    edited = _records([t + " More." for t in train["text"]])
    assert not prepare_token_data(edited, validation, cfg).cache_hit
    assert counted["train"] == 3
    assert len([p for p in tmp_path.iterdir() if not p.name.startswith(".")]) == 3


def test_failed_write_leaves_no_partial_entry(make_cfg, splits, tmp_path, monkeypatch):
    cfg = make_cfg(**SMALL, cache_dir=str(tmp_path))

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(cache, "_write_meta", crash)
    with pytest.raises(KeyboardInterrupt):
        prepare_token_data(*splits, cfg)
    assert list(tmp_path.iterdir()) == []  # neither the entry nor its staging folder
    monkeypatch.undo()
    assert not prepare_token_data(*splits, cfg).cache_hit


def test_failed_build_writes_nothing(make_cfg, splits, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("tokenizer exploded")

    monkeypatch.setattr(prepare, "tokenize_records", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        prepare_token_data(*splits, make_cfg(**SMALL, cache_dir=str(tmp_path / "c")))
    assert not (tmp_path / "c").exists() or list((tmp_path / "c").iterdir()) == []


def test_entry_with_a_foreign_meta_is_ignored(make_cfg, splits, tmp_path, counted):
    cfg = make_cfg(**SMALL, cache_dir=str(tmp_path))
    key = prepare_token_data(*splits, cfg).fingerprint
    meta_path = tmp_path / key / "meta.json"
    meta_path.write_text(json.dumps({"fingerprint": "something else"}))
    assert cache.load_cached(tmp_path, key) is None


def test_empty_validation_split_round_trips(make_cfg, splits, tmp_path):
    cfg = make_cfg(**SMALL, validation_fraction=0.0, cache_dir=str(tmp_path))
    train, _ = splits
    cold = prepare_token_data(train, train.iloc[:0], cfg)
    warm = prepare_token_data(train, train.iloc[:0], cfg)
    assert warm.cache_hit and len(warm.validation) == len(cold.validation) == 0
    assert list(warm.validation.columns) == ["input_ids", "labels", "attention_mask"]


def test_pretrained_tokenizer_by_path_is_loaded_not_trained(
    make_cfg, splits, tmp_path, counted, bpe_tokenizer
):
    folder = tmp_path / "pretrained"
    bpe_tokenizer.save_pretrained(folder)
    cfg = make_cfg(
        **{**SMALL, "tokenizer": {"name_or_path": str(folder)}}, cache_dir=str(tmp_path / "c")
    )
    result = prepare_token_data(*splits, cfg)
    assert counted["train"] == 0
    assert result.tokenizer.get_vocab() == bpe_tokenizer.get_vocab()
    assert result.meta["inputs"]["tokenizer"]["files"] == digest_path(folder)


def test_pretrained_tokenizer_without_template_gets_ours_in_instruction_mode(
    make_cfg, tmp_path, bpe_tokenizer
):
    folder = tmp_path / "no_template"
    bpe_tokenizer.save_pretrained(folder)
    (folder / "chat_template.jinja").unlink()
    chat = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]
    records = pd.DataFrame({"messages": [chat] * 3})
    cfg = make_cfg(
        mode="instruction",
        seq_len=32,
        tokenizer={"name_or_path": str(folder)},
        cache_dir=str(tmp_path / "c"),
    )
    result = prepare_token_data(records, records.iloc[:0], cfg)
    assert result.tokenizer.chat_template == CHAT_TEMPLATE
    assert len(result.train) == 3
