"""The serving router's rules without MLflow: the calibrated P(strong) threshold for two models,
and quality - lambda x cost over a ladder of three."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import char_tokenizer, tiny_gpt2

from router_pipelines.families.query_router import PromptConfig, router_prompt
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.query_router import add_label_tokens, predict_scores
from router_pipelines.serving.query_router import route_questions

QUESTIONS = ["abc", "hello", "zzz", "the json module"]
TEMPLATE = "[Question]\n{question}\n\n[Model]\n{model}\n\nPrediction:\n"


@pytest.fixture(scope="module")
def router():
    torch.manual_seed(0)
    model, tokenizer = tiny_gpt2(n_positions=256), char_tokenizer()
    ids = add_label_tokens(model, tokenizer)
    with torch.no_grad():  # distinct label rows: the scores differ between questions
        model.get_output_embeddings().weight[ids] += 3 * torch.randn(5, 32)
    prompt = PromptConfig(system_instruction="rate", user_template=TEMPLATE)
    metadata = {
        "family": "query_router",
        "prompt": {"system_instruction": "rate", "user_template": TEMPLATE},
    }
    return ModelBundle(model.eval(), tokenizer, metadata), prompt


def test_two_models_route_by_the_calibrated_threshold(router):
    bundle, prompt = router
    routing = {
        "ladder": ["2bit", "8bit"],
        "serving_threshold": 0.5,
        "calibration_p_strong": [0.1, 0.2, 0.3, 0.9],
    }
    table = route_questions(bundle, routing, QUESTIONS, -1.0)
    assert set(table["model"]) <= {"2bit", "8bit"}
    expected = np.where(table["p_strong"] >= 0.5, "8bit", "2bit")
    assert table["model"].tolist() == expected.tolist()
    assert route_questions(bundle, routing, QUESTIONS, 1.0)["model"].tolist() == ["8bit"] * 4


def test_a_ladder_takes_the_best_predicted_quality_minus_lambda_cost(router):
    bundle, prompt = router
    gap_means = [3.0, 2.0, 1.0, 0.5, 0.0]
    costs = [1.0, 2.0, 4.0]
    routing = {
        "ladder": ["2bit", "4bit", "8bit"],
        "ladder_rule": {"gap_means": gap_means, "rung_costs": costs, "serving_lambda": 0.3},
    }
    # by hand: each lower rung's predicted gap from its own prompt's score distribution
    gaps = []
    for name in ("2bit", "4bit"):
        texts = [router_prompt(q, prompt, name) for q in QUESTIONS]
        gaps.append(predict_scores(bundle.model, bundle.tokenizer, texts).numpy() @ gap_means)
    predicted = np.stack([*gaps, np.zeros(len(QUESTIONS))], axis=1)  # (N, 3)
    for lam in (0.0, 0.3, 1.0e9):
        objective = -predicted - lam * np.array(costs)
        expected = [routing["ladder"][i] for i in objective.argmax(axis=1)]
        given = lam if lam != 0.3 else -1.0  # -1: the calibrated serving lambda (0.3)
        table = route_questions(bundle, routing, QUESTIONS, -1.0, given)
        assert table["model"].tolist() == expected, lam
    cheapest = route_questions(bundle, routing, QUESTIONS, -1.0, 1.0e9)
    assert cheapest["route"].tolist() == ["cheap"] * 4
