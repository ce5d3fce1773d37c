"""The data-freshness check that starts every retraining DAG (router_pipelines.freshness): which
models a pipeline registers, and when a model's champion (or a challenger that lost) already
covers the data, code and configuration of now. On a real sqlite MLflow store; the end-to-end
checks are in test_promotion.py (a real debug run) and test_airflow.py (the DAG)."""

from __future__ import annotations

from pathlib import Path

import pytest
from project_copy import PROJECT_ROOT

from router_pipelines.freshness import (
    FRESH_EXIT_CODE,
    check_model,
    check_models,
    compare,
    main,
    registered_models,
)

NOW = {
    "data_fingerprint": "sha256:aaaa",
    "data_sets_fingerprint": "sha256:dddd",
    "git_commit": "0123abcd",
    "config_fingerprint": "sha256:cccc",
    "catalog_fingerprint": "sha256:eeee",
}


@pytest.fixture(scope="module")
def project():
    """The registered pipelines and the debug environment's parameters, as a run sees them."""
    from kedro.config import OmegaConfigLoader

    from router_pipelines.pipeline_registry import register_pipelines

    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"),
        base_env="base",
        default_run_env="debug",
        merge_strategy={"parameters": "soft"},
    )
    return register_pipelines(), loader["parameters"]


def test_a_pipeline_is_judged_by_the_models_it_ends_with(project):
    """The base LM under the switchable model (reused, so not registered again) does not
    decide; the switchable model does. A router's switchable model neither, so the default
    run (base → switchable → both routers) is judged by its routers."""
    pipelines, parameters = project
    assert registered_models(["pretrain"], pipelines, parameters) == ["base_lm_debug"]
    assert registered_models(["switchable"], pipelines, parameters) == ["switchable_lm_debug"]
    router = parameters["query_router"]["register"]
    assert sorted(registered_models(["__default__"], pipelines, parameters)) == sorted(
        [parameters["precision_router"]["register"]["name"], router["name"], router["routed_name"]]
    )
    assert registered_models(["query_router"], pipelines, parameters) == [
        router["name"],
        router["routed_name"],
    ]
    assert registered_models(["pretrain", "switchable"], pipelines, parameters) == [
        "base_lm_debug",
        "switchable_lm_debug",
    ]


def test_each_depth_routing_pipeline_names_its_own_model(project):
    """``mod`` and ``dtf`` share a namespace and a registration node: the pipeline's name
    picks the model (``names: {mod: ..., dtf: ...}``), so one never answers for the other."""
    pipelines, parameters = project
    names = parameters["depth_routing"]["register"]["names"]
    assert registered_models(["mod"], pipelines, parameters) == [names["mod"]]
    assert registered_models(["dtf"], pipelines, parameters) == [names["dtf"]]


def test_switched_off_registration_registers_nothing(project):
    pipelines, parameters = project
    parameters = {**parameters, "pretrain": {**parameters["pretrain"]}}
    parameters["pretrain"]["register"] = {**parameters["pretrain"]["register"], "enabled": False}
    assert registered_models(["pretrain"], pipelines, parameters) == []


def test_an_unknown_pipeline_is_named_with_the_known_ones(project):
    pipelines, parameters = project
    with pytest.raises(ValueError, match=r"unknown pipeline 'nope'.*__default__"):
        registered_models(["nope"], pipelines, parameters)


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    """One sqlite MLflow store for the module (each test uses its own model names: creating a
    store costs seconds)."""
    import mlflow

    uri = f"sqlite:///{tmp_path_factory.mktemp('freshness') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        mlflow.set_experiment("freshness")
        yield mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        while mlflow.active_run() is not None:
            mlflow.end_run()


def test_every_corpus_the_parameters_name_is_fingerprinted(tmp_path):
    """The chat corpus of the memory family is not the main corpus: a change to it leaves
    ``data_fingerprint`` as it was and changes ``data_sets_fingerprint``."""
    from router_pipelines.tracking import data_sets_fingerprint, raw_data_fingerprint

    (tmp_path / "main.jsonl").write_text('{"text": "a"}\n')
    (tmp_path / "chat.jsonl").write_text('{"messages": []}\n')
    parameters = {
        "data": {"raw_path": "main.jsonl", "hub_dataset": None},
        "memory": {"chat_data": {"raw_path": "chat.jsonl", "hub_dataset": None}, "lr": 1e-3},
    }
    main_before = raw_data_fingerprint(parameters["data"], tmp_path)
    all_before = data_sets_fingerprint(parameters, tmp_path)
    assert data_sets_fingerprint(parameters, tmp_path) == all_before, "deterministic"
    (tmp_path / "chat.jsonl").write_text('{"messages": [{"role": "user"}]}\n')
    assert raw_data_fingerprint(parameters["data"], tmp_path) == main_before
    assert data_sets_fingerprint(parameters, tmp_path) != all_before
    hub = {"memory": {"chat_data": {"raw_path": None, "hub_dataset": "org/chats"}}}
    other_hub = {"memory": {"chat_data": {"raw_path": None, "hub_dataset": "org/other"}}}
    assert data_sets_fingerprint(hub) != data_sets_fingerprint(other_hub)


def test_the_catalog_fingerprint_follows_the_resolved_catalog():
    from kedro.config import OmegaConfigLoader

    from router_pipelines.tracking import catalog_fingerprint

    loader = OmegaConfigLoader(
        conf_source=str(PROJECT_ROOT / "conf"), base_env="base", default_run_env="debug"
    )
    catalog = dict(loader["catalog"])
    assert catalog_fingerprint(catalog) == catalog_fingerprint(dict(reversed(catalog.items())))
    name = "data_processing.data_report"
    entry = catalog[name]
    moved_entry = {**entry, "dataset": {**entry["dataset"], "filepath": "elsewhere/report.json"}}
    moved = {**catalog, name: moved_entry}
    assert catalog_fingerprint(moved) != catalog_fingerprint(catalog)
    assert catalog_fingerprint(None) == ""


def test_a_dirty_checkout_is_never_fresh():
    dirty = {**NOW, "git_commit": "0123abcd+dirty"}
    assert compare(dirty, dirty) == ["git_commit: the checkout has uncommitted changes"]
    assert compare(NOW, NOW) == []


def _version(client, model: str, tags: dict, alias: str | None = None, version_tags=None):
    import mlflow

    with mlflow.start_run() as run:
        mlflow.set_tags(tags)
    if not client.search_registered_models(f"name = '{model}'"):
        client.create_registered_model(model)
    version = client.create_model_version(model, f"runs:/{run.info.run_id}/model", run.info.run_id)
    for key, value in (version_tags or {}).items():
        client.set_model_version_tag(model, version.version, key, value)
    if alias:
        client.set_registered_model_alias(model, alias, version.version)
    return version.version


def test_a_champion_trained_on_this_state_is_fresh_and_a_change_is_named(client):
    _version(client, "champion_lm", NOW, alias="champion")
    fresh, why = check_model(client, "champion_lm", NOW)
    assert fresh, why
    assert "v1 (champion) was trained on this data" in why
    fresh, why = check_model(client, "champion_lm", {**NOW, "data_fingerprint": "sha256:bbbb"})
    assert not fresh
    assert "v1 (champion) is stale: data_fingerprint: 'sha256:aaaa' -> 'sha256:bbbb'" in why


def test_a_challenger_that_lost_on_this_state_covers_it(client):
    """Retraining on what a rejected challenger was trained on would give the same model."""
    _version(client, "challenger_lm", {**NOW, "data_fingerprint": "sha256:old"}, alias="champion")
    _version(
        client,
        "challenger_lm",
        NOW,
        alias="challenger",
        version_tags={"promotion": "not promoted: validation_perplexity"},
    )
    fresh, why = check_model(client, "challenger_lm", NOW)
    assert fresh, why
    assert "v2 (challenger, not promoted: validation_perplexity)" in why
    fresh, why = check_model(client, "challenger_lm", {**NOW, "config_fingerprint": "sha256:new"})
    assert not fresh
    assert "v1 (champion) is stale" in why and "v2 (challenger) is stale" in why


def test_a_model_without_aliases_is_compared_on_its_latest_version(client):
    _version(client, "alias_free_lm", {**NOW, "git_commit": "old"})
    _version(client, "alias_free_lm", NOW)
    fresh, why = check_model(client, "alias_free_lm", NOW)
    assert fresh and "v2 (latest version, no champion alias)" in why, why


def test_pipelines_are_fresh_only_when_every_model_is(client):
    _version(client, "first_lm", NOW, alias="champion")
    fresh, why = check_models(["first_lm", "second_lm"], NOW)
    assert not fresh
    assert "second_lm has no registered version yet" in why and why.endswith("retraining")
    _version(client, "second_lm", NOW, alias="champion")
    fresh, why = check_models(["first_lm", "second_lm"], NOW)
    assert fresh and "nothing to retrain" in why, why
    assert check_models([], NOW)[0] is False


def test_the_command_line_exits_99_when_fresh_and_names_a_bad_pipeline(
    client, monkeypatch, capsys, tmp_path: Path
):
    import router_pipelines.freshness as freshness

    _version(client, "cli_lm", NOW, alias="champion")
    monkeypatch.setattr(freshness, "current_state", lambda *args, **kwargs: NOW)
    assert main(["--model", "cli_lm", "--project", str(tmp_path)]) == FRESH_EXIT_CODE
    assert "nothing to retrain" in capsys.readouterr().out
    monkeypatch.setattr(freshness, "current_state", lambda *a, **k: {**NOW, "git_commit": "new"})
    assert main(["--model", "cli_lm", "--project", str(tmp_path)]) == 0
    assert "is stale: git_commit" in capsys.readouterr().out
