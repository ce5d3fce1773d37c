"""Queries, measured outcomes, gap-quantile labels and the seed's JSONL format."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_models import char_tokenizer, tiny_gpt2

from router_pipelines.families.query_router import (
    PromptConfig,
    QueryConfig,
    Rung,
    add_labels,
    check_scorable,
    cut_queries,
    gap_labels,
    read_seed_records,
    router_prompt,
    score_rungs,
    seed_split,
)


def test_gap_labels_by_training_quantiles():
    edges = np.array([0.1, 0.2, 0.3, 0.4])
    labels = gap_labels(np.array([-1.0, 0.1, 0.15, 0.25, 0.35, 0.4, 0.9]), edges)
    assert labels.tolist() == [5, 5, 4, 3, 2, 2, 1]


def test_add_labels_pools_lower_rungs_and_uses_only_the_training_split():
    frame = pd.DataFrame(
        {
            "split": ["train"] * 5 + ["test"],
            "quality_a": [0.0, -1.0, -2.0, -3.0, -4.0, -100.0],
            "quality_b": [0.0] * 6,
            "seconds_a": [1.0] * 6,
            "seconds_b": [2.0] * 6,
            "bytes_a": [10.0] * 6,
            "bytes_b": [20.0] * 6,
            "prompt_loss_a": [3.0] * 6,
            "prompt_loss_b": [2.5] * 6,
        }
    )
    labelled, edges = add_labels(frame, ["a", "b"], [0.2, 0.4, 0.6, 0.8])
    np.testing.assert_allclose(edges, [0.8, 1.6, 2.4, 3.2])  # the test row's gap of 100 is not used
    assert labelled["label"].tolist() == [5, 4, 3, 2, 1, 1]
    assert labelled["strong_seconds"].tolist() == [2.0] * 6
    assert labelled["cheap_prompt_loss"].tolist() == [3.0] * 6


def test_cut_queries_windows_and_block_splits():
    ids = np.arange(20 * 16).reshape(20, 16)
    mask = np.ones_like(ids)
    mask[3, 10:] = 0  # the second window of block 3 runs into padding
    config = QueryConfig(prompt_tokens=4, reference_tokens=4, window_stride=8)
    queries = cut_queries(ids, mask, config)
    assert len(queries) == 39
    assert queries.loc[0, "prompt_ids"] == [0, 1, 2, 3] and queries.loc[0, "reference_ids"] == [
        4,
        5,
        6,
        7,
    ]
    assert queries.groupby("block")["split"].nunique().max() == 1  # a block stays in one split
    assert set(queries["split"]) == {"train", "calibration", "test"}
    with pytest.raises(ValueError, match="= 24 exceeds the 16 tokens of a block"):
        cut_queries(ids, mask, QueryConfig(prompt_tokens=16, reference_tokens=8))


def test_query_config_refuses_splits_that_leave_no_training_data():
    with pytest.raises(ValueError, match="calibration_fraction \\+ test_fraction: 0.5 \\+ 0.5"):
        QueryConfig(calibration_fraction=0.5, test_fraction=0.5)


def _rung(name, model, tokenizer, weight_bytes=100):
    return Rung(name, model, tokenizer, weight_bytes=weight_bytes)


def test_score_rungs_measures_quality_and_cost_per_query():
    torch.manual_seed(0)
    tokenizer = char_tokenizer()
    cheap, strong = tiny_gpt2(), tiny_gpt2()
    queries = cut_queries(
        np.random.default_rng(0).integers(2, 28, size=(6, 12)),
        np.ones((6, 12), dtype=int),
        QueryConfig(
            prompt_tokens=8, reference_tokens=4, calibration_fraction=0.34, test_fraction=0.34
        ),
    )
    out = score_rungs(
        queries, [_rung("a", cheap, tokenizer, 100), _rung("b", strong, tokenizer, 400)]
    )
    row = torch.tensor(queries.loc[2, "prompt_ids"] + queries.loc[2, "reference_ids"])
    logits = strong(input_ids=row[None]).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, row[1:], reduction="none")
    assert out.loc[2, "quality_b"] == pytest.approx(-float(loss[7:].mean()), abs=1e-5)
    # the prompt's own 7 predicted tokens, from the same pass: each rung's, the cheapest's alone
    assert out.loc[2, "prompt_loss_b"] == pytest.approx(float(loss[:7].mean()), abs=1e-5)
    assert out["prompt_loss"].tolist() == out["prompt_loss_a"].tolist()
    assert out.loc[2, "prompt_loss_a"] != pytest.approx(out.loc[2, "prompt_loss_b"])
    assert out.loc[2, "bytes_b"] == 400 * 4 and out.loc[2, "bytes_a"] == 100 * 4
    assert (out["seconds_a"] > 0).all()


def test_check_scorable_refuses_same_models_and_different_tokenizers():
    tokenizer = char_tokenizer()
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="must differ, got rungs \\['8bit', '8bit'\\]"):
        check_scorable([_rung("8bit", model, tokenizer), _rung("8bit", model, tokenizer)])
    other = char_tokenizer()
    other.add_tokens(["zz"])
    with pytest.raises(ValueError, match="'b' and 'a' have different tokenizers"):
        check_scorable([_rung("a", model, tokenizer), _rung("b", model, other)])


def test_router_prompt_is_the_seed_concatenation():
    text = router_prompt("What challenges did FDR face while in office", PromptConfig())
    assert text.startswith("SYSTEM:\n[Instruction]\nBased on the question provided below")
    assert text.endswith(
        "USER:\n[Question]\nWhat challenges did FDR face while in office\n\nPrediction:\n\n\n"
        "ASSISTANT:\n"
    )
    with pytest.raises(ValueError, match="user_template: .* has no \\{question\\} field"):
        PromptConfig(user_template="no field")


def _seed_record(n, answer=None):
    return {
        "messages": [
            {"role": "system", "content": "[Instruction]\nRate it."},
            {"role": "user", "content": f"[Question]\nquestion {n}\n\nPrediction:\n"},
            {"role": "assistant", "content": answer or f"[[{n % 5 + 1}]]"},
        ],
        "prompt": f"question {n}",
    }


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_seed_records_subsample_and_split_like_the_seed(tmp_path):
    path = _write(tmp_path / "full.jsonl", [_seed_record(n) for n in range(50)])
    frame = read_seed_records(path, n_sample=20)
    expected = pd.read_json(path, lines=True).sample(n=20, random_state=42)
    assert frame["prompt"].tolist() == expected["prompt"].tolist()
    assert frame.loc[0, "question"] == expected.iloc[0]["prompt"]
    assert frame["score"].between(1, 5).all()
    train, evaluation = seed_split(frame)
    assert (len(train), len(evaluation)) == (18, 2)
    assert set(train["prompt"]) | set(evaluation["prompt"]) == set(frame["prompt"])
    train_again, _ = seed_split(read_seed_records(path, n_sample=20))
    assert train_again["prompt"].tolist() == train["prompt"].tolist()


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "q"}, "record has no 'messages' field"),
        ({"messages": _seed_record(1)["messages"]}, "record has no 'prompt' field"),
        (
            _seed_record(1, answer="a great answer"),
            "assistant turn 'a great answer' is not a label",
        ),
        (_seed_record(1, answer="[[7]]"), "label 7 is outside 1..5"),
    ],
)
def test_seed_records_bad_input_names_the_value(tmp_path, record, message):
    path = _write(tmp_path / "bad.jsonl", [_seed_record(0), record])
    with pytest.raises(ValueError, match=message):
        read_seed_records(path, n_sample=None)


def test_seed_records_missing_file_and_too_large_sample(tmp_path):
    with pytest.raises(FileNotFoundError, match="was not found"):
        read_seed_records(tmp_path / "missing.jsonl")
    path = _write(tmp_path / "small.jsonl", [_seed_record(n) for n in range(5)])
    with pytest.raises(ValueError, match="n_sample: 1000 is larger than the 5 records"):
        read_seed_records(path)
