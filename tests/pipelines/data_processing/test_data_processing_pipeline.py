"""The data_processing pipeline run as a slice on an in-memory catalog."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner
from transformers import PreTrainedTokenizerFast

from router_pipelines.constants import IGNORE_INDEX
from router_pipelines.data.sources import CorpusSource
from router_pipelines.data.token_store import TokenBlocks
from router_pipelines.data.validation import DataValidationError
from router_pipelines.pipelines.data_processing import create_pipeline
from router_pipelines.pipelines.data_processing import nodes as data_nodes

OUTPUTS = {"tokenizer", "train_tokens", "validation_tokens", "data_processing.data_report"}
WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "eta",
    "theta",
    "iota",
    "kappa",
    "lambda",
    "mu",
]


def _params(tmp_path, raw_path=None, **overrides) -> dict:
    return {
        "raw_path": raw_path or str(tmp_path / "raw.jsonl"),
        "max_records": 40,
        "seed": 0,
        "validation_fraction": 0.1,
        "seq_len": 16,
        "tokenizer": {"vocab_size": 300, "min_frequency": 2},
        "cache_dir": str(tmp_path / "cache"),
        **overrides,
    }


def _write(tmp_path, rows) -> str:
    path = tmp_path / "raw.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return str(path)


def _texts(n: int) -> list[dict]:
    return [{"text": " ".join(WORDS[(i + k) % len(WORDS)] for k in range(12))} for i in range(n)]


def _run(params: dict) -> dict:
    catalog = DataCatalog()
    catalog["params:data"] = params
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    return {name.removeprefix("data_processing."): ds.load() for name, ds in outputs.items()}


def test_wiring():
    pipeline = create_pipeline()
    assert [n.name for n in pipeline.nodes] == [
        "data_processing.ingest_corpus",
        "data_processing.split_corpus",
        "data_processing.tokenize_corpus",
    ]
    assert pipeline.inputs() == {"params:data"}
    assert pipeline.outputs() == OUTPUTS


def test_pretraining_slice_and_warm_rerun(tmp_path):
    _write(tmp_path, _texts(50))
    result = _run(_params(tmp_path))
    assert set(result) == {name.removeprefix("data_processing.") for name in OUTPUTS}
    assert isinstance(result["tokenizer"], PreTrainedTokenizerFast)
    train = result["train_tokens"]
    assert isinstance(train, TokenBlocks) and len(train) > 0
    assert isinstance(train.input_ids, np.memmap) and train.input_ids.shape[1] == 16
    np.testing.assert_array_equal(train.labels, train.input_ids)
    assert result["validation_tokens"].split == "validation"
    report = result["data_report"]
    assert train.fingerprint == report["fingerprint"]
    assert report["cache_hit"] is False
    assert (report["records_read"], report["records_skipped"]) == (50, 0)
    assert (report["train_records"], report["validation_records"]) == (36, 4)
    assert report["train_rows"] == len(train)
    assert report["train_tokens"] == 16 * len(train)
    assert report["vocab_size"] == 300
    assert report["bytes_read"] == (tmp_path / "raw.jsonl").stat().st_size
    assert report["ingest_mb_per_s"] > 0 and report["num_proc"] == 1
    assert all(isinstance(v, int | float | str | bool) for v in report.values())
    again = _run(_params(tmp_path))["data_report"]
    assert again["cache_hit"] is True and again["fingerprint"] == report["fingerprint"]


def test_instruction_slice_masks_prompts(tmp_path):
    rows = [{"prompt": f"Say {word} twice.", "response": f"{word} {word}"} for word in WORDS * 3]
    params = _params(tmp_path, mode="instruction", seq_len=24, max_records=None)
    _write(tmp_path, rows)
    result = _run(params)
    train = result["train_tokens"]
    tokenizer = result["tokenizer"]
    arrays = (train.input_ids, train.labels, train.attention_mask)
    for ids, labels, mask in zip(*(a.tolist() for a in arrays), strict=True):
        learned = [t for t in labels if t != IGNORE_INDEX]
        answer = tokenizer.decode(learned)
        assert answer.endswith("<|endoftext|>") and "Say" not in answer
        assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(labels, ids, strict=True))
        assert all(lab == IGNORE_INDEX for lab, m in zip(labels, mask, strict=True) if m == 0)
    assert result["data_report"]["train_supervised_tokens"] > 0


def test_invalid_record_stops_before_anything_is_written(tmp_path):
    _write(tmp_path, [*_texts(5), {"text": ""}])
    with pytest.raises(DataValidationError, match=r"raw\.jsonl:6: field 'text' is empty"):
        _run(_params(tmp_path))
    assert not (tmp_path / "cache").exists()


def test_a_missing_corpus_names_data_raw_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.jsonl' does not exist \(data\.raw_path\)"):
        _run(_params(tmp_path, raw_path=str(tmp_path / "nope.jsonl")))


def test_a_validation_split_too_small_for_a_block_stops_before_writing(tmp_path):
    _write(tmp_path, _texts(50))
    params = _params(tmp_path, max_records=None, validation_fraction=0.02, seq_len=96)
    with pytest.raises(ValueError, match=r"^data\.validation_fraction / data\.seq_len: "):
        _run(params)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_hub_dataset_replaces_raw_path(tmp_path, monkeypatch):
    seen = []

    def fake_hub(cfg):
        seen.append(cfg.hub_dataset)
        return "scanned hub corpus"

    monkeypatch.setattr("router_pipelines.data.hub.scan_hub_dataset", fake_hub)
    params = {"hub_dataset": "wikitext2", "raw_path": "does/not/exist.jsonl"}
    assert data_nodes.ingest_corpus(params) == "scanned hub corpus"
    assert seen == ["wikitext2"]


def test_a_local_hub_folder_streams_through_the_whole_pipeline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    folder = tmp_path / "hub_corpus"
    folder.mkdir()
    (folder / "part-0.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _texts(30)))
    params = _params(tmp_path, hub_dataset=str(folder), streaming=True, max_records=20)
    result = _run(params)
    report = result["data_report"]
    assert report["source"] == f"{folder}[default/train]"
    assert (report["records_read"], report["train_records"], report["validation_records"]) == (
        20,
        18,
        2,
    )
    assert len(result["train_tokens"]) > 0


def test_nodes_hand_small_descriptors_along(tmp_path):
    _write(tmp_path, _texts(50))
    corpus = data_nodes.ingest_corpus(_params(tmp_path))
    assert isinstance(corpus, CorpusSource) and corpus.records == 50
    split = data_nodes.split_corpus(corpus, _params(tmp_path))
    assert split.assignment.dtype == np.uint8 and split.assignment.nbytes == 50
    assert (split.n_train, split.n_validation) == (36, 4)


def test_unknown_parameter_is_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"data: unknown key 'seqlen' \(did you mean 'seq_len'\?\)"
    ):
        data_nodes.split_corpus(None, {"seqlen": 3})
