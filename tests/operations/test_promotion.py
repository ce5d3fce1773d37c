"""Champion/challenger: a better challenger is promoted, a worse one is not, the champion is
never lost; and a real retrain with a worse result leaves the champion in place."""

from __future__ import annotations

import json

import mlflow
import pytest

from operations.support import guarded
from router_pipelines.config import ConfigError
from router_pipelines.promotion import (
    CHALLENGER,
    CHAMPION,
    PromotionRule,
    parse_promotion_params,
    promote,
    promote_registration,
)

RULE = PromotionRule(
    metric="perplexity", min_relative_change=0.01, cost_metric="bits", greater_is_better=False
)
HELD_OUT = "abc123/validation"


@pytest.fixture
def retrain(mlflow_store, tmp_path):
    """Register a new version of ``lm`` with ``metrics`` (as tags, as register_model does) and
    run the promotion on it; returns the client and the function."""
    client = mlflow.MlflowClient()
    client.create_registered_model("lm")
    source = tmp_path / "model"
    source.mkdir()

    def _retrain(held_out: str = HELD_OUT, **metrics: float) -> dict:
        tags = {key: str(value) for key, value in metrics.items()}
        version = str(client.create_model_version("lm", str(source), tags=tags).version)
        return promote("lm", version, metrics, RULE, held_out=held_out)

    return client, _retrain


def _aliases(client) -> dict[str, str]:
    return {k: str(v) for k, v in client.get_registered_model("lm").aliases.items()}


def test_the_first_version_becomes_champion(retrain):
    client, new = retrain
    result = new(perplexity=10.0, bits=4.0)
    assert result["promoted"] and result["alias"] == CHAMPION
    assert _aliases(client) == {CHAMPION: "1", CHALLENGER: "1"}


def test_a_better_challenger_is_promoted(retrain):
    client, new = retrain
    new(perplexity=10.0, bits=4.0)
    result = new(perplexity=9.0, bits=4.0)
    assert result["promoted"] is True, result["reason"]
    assert _aliases(client) == {CHAMPION: "2", CHALLENGER: "2"}
    assert client.get_model_version("lm", "1").tags["promotion"] == "superseded by v2"
    assert client.get_model_version("lm", "2").tags["promotion"].startswith("champion:")


@pytest.mark.parametrize(
    ("metrics", "why"),
    [
        ({"perplexity": 11.0, "bits": 4.0}, "worse"),
        ({"perplexity": 9.95, "bits": 4.0}, "better, but by less than the 1 % margin"),
        ({"perplexity": 8.0, "bits": 5.0}, "better, but more costly"),
    ],
)
def test_a_challenger_that_does_not_pass_stays_challenger(retrain, metrics, why):
    client, new = retrain
    new(perplexity=10.0, bits=4.0)
    result = new(**metrics)
    assert result["promoted"] is False, why
    assert _aliases(client) == {CHAMPION: "1", CHALLENGER: "2"}, "the champion is kept"
    reason = client.get_model_version("lm", "2").tags["promotion"]
    assert reason.startswith("not promoted:") and "check failed" in reason  # MLflow's message


def test_the_champion_survives_a_series_of_retrains(retrain):
    client, new = retrain
    best, champion = float("inf"), None
    for number, value in enumerate([10.0, 12.0, 9.0, 9.5, 8.95, 30.0], start=1):
        new(perplexity=value, bits=4.0)
        if value <= best * 0.99:
            best, champion = value, str(number)
        assert _aliases(client) == {CHAMPION: champion, CHALLENGER: str(number)}
    assert champion == "3", "8.95 is less than 1 % better than 9.0"


def test_a_champion_measured_on_other_data_is_not_compared(retrain):
    client, new = retrain
    new(held_out="old/validation", perplexity=10.0, bits=4.0)
    result = new(perplexity=5.0, bits=4.0)
    assert result["promoted"] is False and "other held-out data" in result["reason"]
    assert _aliases(client)[CHAMPION] == "1"


def test_a_missing_metric_names_the_rule(retrain):
    with pytest.raises(ConfigError, match=r"promotion.rules.pretrain: metric 'bits'"):
        promote(
            "lm",
            "1",
            {"perplexity": 10.0},
            RULE,
            held_out=HELD_OUT,
            where="promotion.rules.pretrain",
        )


def test_nothing_registered_changes_nothing(mlflow_store):
    result = promote_registration(
        {"registered": False, "reason": "not trained in this run"},
        None,
        {"rules": {"pretrain": {"metric": "perplexity"}}},
        namespace="pretrain",
    )
    assert result == {
        "promoted": False,
        "alias": None,
        "reason": "nothing registered (not trained in this run)",
    }


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (
            {"rules": {"pretrain": {"metric": "p", "min_relative_change": 1.5}}},
            r"promotion.rules.pretrain.min_relative_change: a fraction between 0 and 1, got 1.5",
        ),
        (
            {"rules": {"pretrain": {"metrc": "p"}}},
            r"promotion.rules.pretrain: unknown key 'metrc' \(did you mean 'metric'\?\)",
        ),
        ({"enabled": "yes"}, r"promotion.enabled"),
    ],
)
def test_bad_promotion_parameters_are_named(group, message):
    with pytest.raises(ConfigError, match=message):
        parse_promotion_params(group)


@pytest.mark.slow
def test_a_worse_retrain_leaves_the_champion_in_place(debug_run):
    """The debug run made base_lm_debug v1 champion; a retrain with 2 steps instead of 30 is
    registered as v2 and stays challenger, with MLflow's reason."""
    client = debug_run.client()
    first = json.loads(
        (debug_run.root / "data/08_reporting/debug/pretrain/promotion.json").read_text()
    )
    assert first["promoted"] is True and first["alias"] == CHAMPION
    result = guarded(
        [
            "-m",
            "kedro",
            "run",
            "--env=debug",
            "--pipelines=pretrain",
            "--params=pretrain.training.max_steps=2,pretrain.training.eval_steps=2,"
            "pretrain.training.warmup_steps=1",
        ],
        debug_run.root,
        debug_run.root / "network-retrain.jsonl",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    promotion = json.loads(
        (debug_run.root / "data/08_reporting/debug/pretrain/promotion.json").read_text()
    )
    assert promotion["promoted"] is False and promotion["version"] == "2", promotion
    assert "validation_perplexity" in promotion["reason"]
    aliases = {k: str(v) for k, v in client.get_registered_model("base_lm_debug").aliases.items()}
    assert aliases == {CHAMPION: "1", CHALLENGER: "2"}
    v1, v2 = (client.get_model_version("base_lm_debug", v) for v in ("1", "2"))
    assert float(v2.tags["validation_perplexity"]) > float(v1.tags["validation_perplexity"])
    assert v1.tags["held_out_data"] == v2.tags["held_out_data"], "same held-out split"


@pytest.mark.slow
def test_the_freshness_check_skips_only_what_the_champion_already_covers(debug_run):
    """Same data, code and configuration as switchable_lm_debug's champion run: exit 99 (skip);
    new raw data: exit 0 (retrain), naming what changed."""
    from router_pipelines.freshness import FRESH_EXIT_CODE

    def check() -> tuple[int, str]:
        result = guarded(
            [
                "-m",
                "router_pipelines.freshness",
                "--model",
                "switchable_lm_debug",
                "--env",
                "debug",
            ],
            debug_run.root,
            debug_run.root / "network-freshness.jsonl",
        )
        return result.returncode, result.stdout + result.stderr

    code, out = check()
    assert code == FRESH_EXIT_CODE, out[-3000:]
    assert "nothing to retrain" in out
    corpus = debug_run.root / "data" / "01_raw" / "python_docs.jsonl"
    original = corpus.read_bytes()
    corpus.write_bytes(original + b'{"text": "def new_record():\\n    return 1\\n"}\n')
    try:
        code, out = check()
    finally:
        corpus.write_bytes(original)
    assert code == 0, out[-3000:]
    assert "is stale: data_fingerprint" in out
