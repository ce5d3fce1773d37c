"""The data_processing pipeline run as a slice on an in-memory catalog."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kedro.io import DataCatalog
from kedro.runner import SequentialRunner
from transformers import PreTrainedTokenizerFast

from router_pipelines.data.packing import IGNORE_INDEX
from router_pipelines.data.validation import DataValidationError
from router_pipelines.pipelines.data_processing import create_pipeline
from router_pipelines.pipelines.data_processing import nodes as data_nodes

OUTPUTS = {"tokenizer", "train_tokens", "validation_tokens", "data_report"}
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


def _params(tmp_path, **overrides) -> dict:
    return {
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


def _run(raw_path: str, params: dict) -> dict:
    catalog = DataCatalog()
    catalog["params:raw_path"] = raw_path
    catalog["params:data"] = params
    outputs = SequentialRunner().run(create_pipeline(), catalog)
    return {name: dataset.load() for name, dataset in outputs.items()}


def test_wiring():
    pipeline = create_pipeline()
    assert [n.name for n in pipeline.nodes] == ["ingest_corpus", "split_corpus", "tokenize_corpus"]
    assert pipeline.inputs() == {"params:raw_path", "params:data"}
    assert pipeline.outputs() == OUTPUTS


def test_pretraining_slice_and_warm_rerun(tmp_path):
    raw_path = _write(tmp_path, _texts(50))
    result = _run(raw_path, _params(tmp_path))
    assert set(result) == OUTPUTS
    assert isinstance(result["tokenizer"], PreTrainedTokenizerFast)
    train = result["train_tokens"]
    assert isinstance(train, pd.DataFrame) and len(train) > 0
    assert {len(row) for column in train.columns for row in train[column]} == {16}
    assert train["labels"].tolist() == train["input_ids"].tolist()
    report = result["data_report"]
    assert report["cache_hit"] is False
    assert (report["records_read"], report["records_skipped"]) == (50, 0)
    assert (report["train_records"], report["validation_records"]) == (36, 4)
    assert report["train_rows"] == len(train)
    assert report["train_tokens"] == 16 * len(train)
    assert report["vocab_size"] == 300
    assert all(isinstance(v, int | float | str | bool) for v in report.values())
    again = _run(raw_path, _params(tmp_path))["data_report"]
    assert again["cache_hit"] is True and again["fingerprint"] == report["fingerprint"]


def test_instruction_slice_masks_prompts(tmp_path):
    rows = [{"prompt": f"Say {word} twice.", "response": f"{word} {word}"} for word in WORDS * 3]
    params = _params(tmp_path, mode="instruction", seq_len=24, max_records=None)
    result = _run(_write(tmp_path, rows), params)
    train = result["train_tokens"]
    tokenizer = result["tokenizer"]
    for ids, labels, mask in train.itertuples(index=False):
        learned = [t for t in labels if t != IGNORE_INDEX]
        answer = tokenizer.decode(learned)
        assert answer.endswith("<|endoftext|>") and "Say" not in answer
        assert all(lab in (IGNORE_INDEX, tok) for lab, tok in zip(labels, ids, strict=True))
        assert all(lab == IGNORE_INDEX for lab, m in zip(labels, mask, strict=True) if m == 0)
    assert result["data_report"]["train_supervised_tokens"] > 0


def test_invalid_record_stops_before_anything_is_written(tmp_path):
    raw_path = _write(tmp_path, [*_texts(5), {"text": ""}])
    with pytest.raises(DataValidationError, match=r"raw\.jsonl:6: field 'text' is empty"):
        _run(raw_path, _params(tmp_path))
    assert not (tmp_path / "cache").exists()


def test_hub_dataset_replaces_raw_path(tmp_path, monkeypatch):
    seen = []

    def fake_hub(cfg):
        seen.append(cfg.hub_dataset)
        return pd.DataFrame({"text": ["from the hub"]})

    monkeypatch.setattr(data_nodes, "load_hub_records", fake_hub)
    records = data_nodes.ingest_corpus("does/not/exist.jsonl", {"hub_dataset": "wikitext2"})
    assert seen == ["wikitext2"] and records["text"].tolist() == ["from the hub"]


def test_unknown_parameter_is_named(tmp_path):
    with pytest.raises(
        ValueError, match=r"data: unknown key 'seqlen' \(did you mean 'seq_len'\?\)"
    ):
        data_nodes.split_corpus(pd.DataFrame({"text": ["x"]}), {"seqlen": 3})
