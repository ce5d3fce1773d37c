"""Hub datasets: the name table, and real ``datasets.load_dataset`` calls on local folders.

Tests stay offline (tests/conftest.py sets HF_HUB_OFFLINE and HF_DATASETS_OFFLINE): only local
folders are loaded, and preset names are checked through a recording stand-in.
"""

from __future__ import annotations

import json

import datasets
import pytest

from router_pipelines.data.hub import (
    HUB_PRESETS,
    STAGING_DIR,
    load_hub_records,
    resolve_hub_dataset,
    scan_hub_dataset,
)
from router_pipelines.data.prepare import choose_splits, prepare_token_data
from router_pipelines.data.sources import iter_examples


@pytest.fixture
def hub_folder(tmp_path, monkeypatch):
    """A local folder of JSON-lines files that ``load_dataset`` reads like a hub repo."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "my_corpus"
    folder.mkdir()
    for part in range(2):
        rows = [{"text": f"document {part}-{i} with some words"} for i in range(5)]
        (folder / f"part-{part}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def recorded_load(monkeypatch):
    """Replace ``datasets.load_dataset`` by a recorder returning given rows."""
    calls = []

    def install(rows):
        def fake_load(path, **kwargs):
            calls.append((path, kwargs))
            return rows

        monkeypatch.setattr(datasets, "load_dataset", fake_load)
        return calls

    return install


@pytest.mark.parametrize(
    ("name", "path", "subset", "split", "streaming", "field"),
    [
        ("c4", "allenai/c4", "en", "train", True, "text"),
        ("wikitext2", "Salesforce/wikitext", "wikitext-2-raw-v1", "train", False, "text"),
        ("ptb", "ptb-text-only/ptb_text_only", "penn_treebank", "train", False, "sentence"),
        ("pileval", "mit-han-lab/pile-val-backup", None, "validation", False, "text"),
        ("someone/their_set", "someone/their_set", None, "train", False, "text"),
    ],
)
def test_name_resolution_table(name, path, subset, split, streaming, field):
    spec = resolve_hub_dataset(name)
    assert (spec.path, spec.subset, spec.split, spec.streaming, spec.text_field) == (
        path,
        subset,
        split,
        streaming,
        field,
    )


def test_explicit_settings_override_a_preset():
    spec = resolve_hub_dataset(
        "c4", subset="realnewslike", split="validation", streaming=False, text_field="body"
    )
    assert (spec.subset, spec.split, spec.streaming, spec.text_field) == (
        "realnewslike",
        "validation",
        False,
        "body",
    )
    assert set(HUB_PRESETS) == {"c4", "wikitext2", "ptb", "pileval"}


def test_loads_a_local_folder_through_datasets(hub_folder, make_cfg):
    records = load_hub_records(make_cfg(hub_dataset=str(hub_folder)))
    assert len(records) == 10
    assert sorted(records["text"])[0] == "document 0-0 with some words"
    assert records.attrs["ingest"]["source"] == f"{hub_folder}[default/train]"


def test_streaming_reads_only_max_records(hub_folder, make_cfg):
    records = load_hub_records(make_cfg(hub_dataset=str(hub_folder), streaming=True, max_records=3))
    assert len(records) == 3
    with pytest.raises(ValueError, match="max_records: required when streaming"):
        load_hub_records(make_cfg(hub_dataset=str(hub_folder), streaming=True))


def test_preset_arguments_reach_load_dataset(recorded_load, make_cfg):
    calls = recorded_load([{"text": f"row {i}"} for i in range(10)])
    records = load_hub_records(make_cfg(hub_dataset="c4", max_records=4))
    assert calls == [("allenai/c4", {"name": "en", "split": "train", "streaming": True})]
    assert records["text"].tolist() == ["row 0", "row 1", "row 2", "row 3"]
    load_hub_records(make_cfg(hub_dataset="pileval", hub_trust_remote_code=True))
    assert calls[1] == (
        "mit-han-lab/pile-val-backup",
        {"name": None, "split": "validation", "streaming": False, "trust_remote_code": True},
    )


def test_wikitext_blank_rows_are_dropped_but_rows_keep_their_numbers(recorded_load, make_cfg):
    recorded_load([{"text": ""}, {"text": " = Title = \n"}, {"text": "\n"}, {"text": 7}])
    with pytest.raises(ValueError) as err:
        load_hub_records(make_cfg(hub_dataset="wikitext2"))
    message = str(err.value)
    assert (
        "Salesforce/wikitext[wikitext-2-raw-v1/train]:4: field 'text' must be a string" in message
    )
    assert "1 invalid record(s) of 2" in message  # the two blank rows are not records


def test_ptb_reads_the_sentence_field(recorded_load, make_cfg):
    recorded_load([{"sentence": "the <unk> market fell"}])
    assert load_hub_records(make_cfg(hub_dataset="ptb"))["text"].tolist() == [
        "the <unk> market fell"
    ]


def test_a_streamed_dataset_is_spilled_once_then_read_like_a_file(hub_folder, make_cfg, tmp_path):
    cfg = make_cfg(
        hub_dataset=str(hub_folder),
        streaming=True,
        max_records=7,
        cache_dir=str(tmp_path / "cache"),
    )
    corpus = scan_hub_dataset(cfg)
    staged = list((tmp_path / "cache" / STAGING_DIR).iterdir())
    assert [p.suffix for p in staged] == [".jsonl"] and corpus.path == str(staged[0])
    assert corpus.source == f"{hub_folder}[default/train]"
    assert (corpus.records, corpus.records_read, corpus.hub["streaming"]) == (7, 7, True)
    texts = [example["text"] for example in iter_examples(corpus)]  # from the local file
    assert len(texts) == 7 and all(t.startswith("document ") for t in texts)


def test_hub_rows_become_token_stores(hub_folder, make_cfg, tmp_path):
    cfg = make_cfg(
        hub_dataset=str(hub_folder),
        streaming=True,
        max_records=10,
        validation_fraction=0.2,
        seq_len=8,
        tokenizer={"vocab_size": 280},
        cache_dir=str(tmp_path / "cache"),
    )
    tokens = prepare_token_data(choose_splits(scan_hub_dataset(cfg), cfg), cfg)
    assert len(tokens.train) > 0 and len(tokens.validation) > 0
    assert tokens.meta["inputs"]["corpus"]["hub"]["path"] == str(hub_folder)


def test_a_hub_problem_names_the_dataset_and_row(recorded_load, make_cfg, tmp_path):
    recorded_load([{"text": "a fine row"}, {"text": ""}, {"text": "another one"}])
    with pytest.raises(ValueError, match=r"allenai/c4\[en/train\]:2: field 'text' is empty"):
        scan_hub_dataset(make_cfg(hub_dataset="c4", max_records=3, cache_dir=str(tmp_path)))
