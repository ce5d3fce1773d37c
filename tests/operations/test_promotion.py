"""Champion/challenger: a better challenger is promoted, a worse one is not, the champion is
never lost; and a real retrain with a worse result leaves the champion in place."""

from __future__ import annotations

import json

import mlflow
import pytest

from operations.support import guarded, start_debug_run
from router_pipelines.config import ConfigError
from router_pipelines.promotion import (
    CHALLENGER,
    CHAMPION,
    PromotionRule,
    follow_promotion,
    parse_promotion_params,
    promote,
    promote_registration,
)

RULE = PromotionRule(
    metric="perplexity", min_relative_change=0.01, cost_metric="bits", greater_is_better=False
)
HELD_OUT = "abc123/validation"


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory):
    """One sqlite store for the module's registry tests: creating a store runs MLflow's
    migrations, seconds each on a loaded machine; each test deletes its model afterwards."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('promotion') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture
def store(shared_store):
    mlflow.set_tracking_uri(shared_store)
    mlflow.set_registry_uri(shared_store)
    yield shared_store
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture
def retrain(store, tmp_path):
    """Register a new version of ``lm`` with ``metrics`` (as tags, as register_model does) and
    run the promotion on it; returns the client and the function. ``lm`` is deleted after the
    test, so every test starts from an empty registry."""
    client = mlflow.MlflowClient()
    client.create_registered_model("lm")
    source = tmp_path / "model"
    source.mkdir()

    def _retrain(held_out: str = HELD_OUT, rescore=None, **metrics: float) -> dict:
        tags = {key: str(value) for key, value in metrics.items()}
        version = str(client.create_model_version("lm", str(source), tags=tags).version)
        return promote("lm", version, metrics, RULE, held_out=held_out, rescore=rescore)

    yield client, _retrain
    client.delete_registered_model("lm")


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


def test_a_companion_follows_its_model_and_keeps_its_champion_when_it_loses(retrain, tmp_path):
    """The query router's routed_lm: challenger with its router, champion when it is."""
    client, new = retrain
    client.create_registered_model("companion")
    try:

        def companion() -> str:
            source = tmp_path / "companion"
            source.mkdir(exist_ok=True)
            return str(client.create_model_version("companion", str(source)).version)

        first = follow_promotion("companion", companion(), new(perplexity=10.0, bits=4.0))
        assert first == {"name": "companion", "version": "1", "alias": CHAMPION}
        second = follow_promotion("companion", companion(), new(perplexity=11.0, bits=4.0))
        assert second["alias"] == CHALLENGER
        aliases = client.get_registered_model("companion").aliases
        assert {k: str(v) for k, v in aliases.items()} == {CHAMPION: "1", CHALLENGER: "2"}
        tag = client.get_model_version("companion", "2").tags["promotion"]
        assert tag == "not promoted: follows lm v2"
        assert client.get_model_version("companion", "1").tags["promotion"] == (
            "champion with lm v1"
        )
    finally:
        client.delete_registered_model("companion")


def test_a_companion_without_a_champion_takes_the_one_from_its_champions_run(store, tmp_path):
    """A registry from before companions: lm v1 is champion, and routed_lm v1 (same run) has
    no alias. When lm v2 loses, routed_lm v1 becomes champion, found by lm v1's run, so
    models:/routed_lm@champion serves the champion router's parts."""
    client = mlflow.MlflowClient()
    source = tmp_path / "model"
    source.mkdir()
    for name in ("lm", "companion"):
        client.create_registered_model(name)
    # an experiment of this store: the fluent API's active experiment may be another test's
    experiment = client.get_experiment_by_name("companions") or client.get_experiment(
        client.create_experiment("companions")
    )
    try:

        def register(perplexity: float) -> tuple[dict, str]:
            with mlflow.start_run(experiment_id=experiment.experiment_id) as run:
                run_id = run.info.run_id
            lm = client.create_model_version("lm", str(source), run_id=run_id)
            companion = client.create_model_version("companion", str(source), run_id=run_id)
            result = promote(
                "lm",
                str(lm.version),
                {"perplexity": perplexity, "bits": 4.0},
                RULE,
                held_out=HELD_OUT,
            )
            return result, str(companion.version)

        first, _ = register(10.0)  # promoted; its companion is left without aliases
        assert first["promoted"] and not client.get_registered_model("companion").aliases
        second, version = register(11.0)
        assert follow_promotion("companion", version, second)["alias"] == CHALLENGER
        aliases = client.get_registered_model("companion").aliases
        assert {k: str(v) for k, v in aliases.items()} == {CHAMPION: "1", CHALLENGER: "2"}
        assert client.get_model_version("companion", "1").tags["promotion"] == (
            "champion with lm v1"
        )
    finally:
        for name in ("lm", "companion"):
            client.delete_registered_model(name)


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


class Rescorer:
    """A family's re-scoring stand-in: the champion's numbers on the current held-out data."""

    def __init__(self, **metrics: float) -> None:
        self.metrics, self.calls = metrics, []

    def __call__(self, champion) -> dict:
        self.calls.append(str(champion.version))
        return self.metrics


def test_a_champion_measured_on_other_data_is_rescored_and_compared_on_it(retrain):
    """On its old data the champion scored 10; re-scored on the new data it scores 12, so a
    challenger at 11 wins (it would lose against the stale 10)."""
    client, new = retrain
    new(held_out="old/validation", perplexity=10.0, bits=4.0)
    rescore = Rescorer(perplexity=12.0, bits=4.0)
    result = new(rescore=rescore, perplexity=11.0, bits=4.0)
    assert rescore.calls == ["1"], "the champion, and only it, is re-scored"
    assert result["promoted"] is True, result["reason"]
    assert result["champion_rescored"] == {"perplexity": 12.0, "bits": 4.0}
    assert "12 (re-scored on this held-out data)" in result["reason"]
    assert _aliases(client) == {CHAMPION: "2", CHALLENGER: "2"}
    v1 = client.get_model_version("lm", "1")
    assert v1.tags["rescored.perplexity"] == "12.0"
    assert v1.tags["rescored.held_out_data"] == HELD_OUT
    assert v1.tags["held_out_data"] == "old/validation", "its registered numbers are kept"
    assert v1.tags["perplexity"] == "10.0"


def test_a_worse_challenger_loses_to_the_rescored_champion(retrain):
    """Registered at 12 on its old data, the champion scores 9 on the new data: a challenger
    at 10 (better than the stale 12) stays challenger, and the re-scored numbers are reused by
    the next challenger on the same data instead of evaluating the champion again."""
    client, new = retrain
    new(held_out="old/validation", perplexity=12.0, bits=4.0)
    rescore = Rescorer(perplexity=9.0, bits=4.0)
    result = new(rescore=rescore, perplexity=10.0, bits=4.0)
    assert result["promoted"] is False, result["reason"]
    assert "re-scored on this held-out data" in result["reason"]
    assert "check failed" in result["reason"], "MLflow's validation decided"
    assert _aliases(client) == {CHAMPION: "1", CHALLENGER: "2"}
    again = new(rescore=rescore, perplexity=8.5, bits=4.0)
    assert rescore.calls == ["1"], "the second challenger reuses the rescored.* tags"
    assert again["promoted"] is True and again["champion_rescored"]["perplexity"] == 9.0
    assert _aliases(client)[CHAMPION] == "3"


def test_a_champion_that_cannot_be_rescored_is_kept(retrain):
    client, new = retrain
    new(held_out="old/validation", perplexity=10.0, bits=4.0)

    def broken(champion):
        raise ValueError("its tokenizer (512 tokens) is not the data's (600 tokens)")

    result = new(rescore=broken, perplexity=5.0, bits=4.0)
    assert result["promoted"] is False
    assert "could not be re-scored" in result["reason"] and "512 tokens" in result["reason"]
    assert _aliases(client) == {CHAMPION: "1", CHALLENGER: "2"}


def test_promotion_node_passes_its_inputs_to_the_family_function():
    from router_pipelines.promotion import promotion_node

    def evaluate(bundle, validation_tokens, training):
        return {}

    node = promotion_node("pretrain", evaluate=evaluate, inputs=["validation_tokens", "params:t"])
    assert node.inputs == [
        "registration",
        "data_processing.data_report",
        "params:promotion",
        "validation_tokens",
        "params:t",
    ]
    assert promotion_node("pretrain").inputs[3:] == []
    with pytest.raises(ValueError, match="inputs .* without evaluate"):
        promotion_node("pretrain", inputs=["validation_tokens"])


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


def test_nothing_registered_changes_nothing(store):
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


@pytest.fixture(scope="module")
def pretrain_run(tmp_path_factory):
    """A debug ``pretrain`` run of its own: the retrain below registers v2, which the shared
    ``debug_run``'s readers (browser, MLflow checks) must never see, whatever order pytest-xdist
    runs the modules in."""
    return start_debug_run(tmp_path_factory.mktemp("retrain") / "project", "--pipelines=pretrain")


@pytest.mark.slow
def test_a_worse_retrain_on_new_held_out_data_leaves_the_champion_in_place(pretrain_run):
    """The debug run made base_lm_debug v1 champion. A retrain with 2 steps instead of 30 on
    32-token rows instead of 64 (other held-out data: the token cache's fingerprint changes) is
    registered as v2; v1 is loaded from the registry and re-scored on the new rows by the same
    evaluation, and v2, worse than that, stays challenger with MLflow's reason."""
    client = pretrain_run.client()
    first = json.loads(
        (pretrain_run.root / "data/08_reporting/debug/pretrain/promotion.json").read_text()
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
            "pretrain.training.warmup_steps=1,data.seq_len=32",
        ],
        pretrain_run.root,
        pretrain_run.root / "network-retrain.jsonl",
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    promotion = json.loads(
        (pretrain_run.root / "data/08_reporting/debug/pretrain/promotion.json").read_text()
    )
    assert promotion["promoted"] is False and promotion["version"] == "2", promotion
    assert "validation_perplexity" in promotion["reason"]
    assert "re-scored on this held-out data" in promotion["reason"], promotion["reason"]
    aliases = {k: str(v) for k, v in client.get_registered_model("base_lm_debug").aliases.items()}
    assert aliases == {CHAMPION: "1", CHALLENGER: "2"}
    v1, v2 = (client.get_model_version("base_lm_debug", v) for v in ("1", "2"))
    assert v1.tags["held_out_data"] != v2.tags["held_out_data"], "other held-out data"
    assert v1.tags["rescored.held_out_data"] == v2.tags["held_out_data"]
    rescored = float(v1.tags["rescored.validation_perplexity"])
    assert rescored == promotion["champion_rescored"]["validation_perplexity"]
    assert rescored != float(v1.tags["validation_perplexity"]), "scored on other rows"
    assert float(v2.tags["validation_perplexity"]) > rescored, "the challenger is worse"
    assert float(v1.tags["rescored.parameters"]) == float(v1.tags["parameters"])


@pytest.mark.slow
def test_the_freshness_check_skips_only_what_the_champion_already_covers(debug_run):
    """Same data, code and configuration as switchable_lm_debug's champion run: exit 99 (skip);
    a new record in the raw corpus, a line added to the chat corpus or a new catalog entry: exit
    0 (retrain), naming what changed; every change undone: exit 99 again."""
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
    raw = debug_run.root / "data" / "01_raw"
    changes = (
        (
            raw / "python_docs.jsonl",
            b'{"text": "def new_record():\\n    return 1\\n"}\n',
            "data_fingerprint",
        ),
        # the memory family's chat corpus: not the main corpus, still data the project trains on
        (raw / "python_docs_chat.jsonl", b"\n", "data_sets_fingerprint"),
        (
            debug_run.root / "conf" / "debug" / "catalog_extra.yml",
            b"extra_table:\n  type: pandas.ParquetDataset\n  filepath: data/extra.parquet\n",
            "catalog_fingerprint",
        ),
    )
    for path, added, changed in changes:
        original = path.read_bytes() if path.exists() else None
        path.write_bytes((original or b"") + added)
        try:
            code, out = check()
        finally:
            if original is None:
                path.unlink()
            else:
                path.write_bytes(original)
        assert code == 0, out[-3000:]
        assert f"is stale: {changed}" in out, out[-3000:]
    code, out = check()
    assert code == FRESH_EXIT_CODE, out[-3000:]
