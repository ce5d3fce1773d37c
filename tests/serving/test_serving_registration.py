"""register_model: pyfunc models logged from code, loadable as the README shows."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
import yaml

from router_pipelines.serving import WRAPPERS, register_model


def _greedy(bundle, prompt: str, new_tokens: int) -> str:
    """The reference continuation, straight from the model (what predict must return)."""
    ids = bundle.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        generated = bundle.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    return bundle.tokenizer.decode(generated[0, ids.shape[1] :], skip_special_tokens=True)


def _mlmodel(model_uri: str) -> dict:
    local = mlflow.artifacts.download_artifacts(artifact_uri=f"{model_uri}/MLmodel")
    with open(local) as handle:
        return yaml.safe_load(handle)


def test_base_model_loads_with_the_readme_snippet(mlflow_store, base_bundle, monkeypatch):
    with mlflow.start_run() as run:
        first = register_model(base_bundle, "base_lm", tags={"train_loss": 1.5})
        second = register_model(base_bundle, "base_lm", description="second try")
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["run_id"] == run.info.run_id
    assert first["model_uri"] == "models:/base_lm/1"

    # MLflow refuses pickled python models with this off: the load below proves there is none.
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    loaded = mlflow.pyfunc.load_model("models:/base_lm/latest")  # the README's snippet
    outputs = loaded.predict(["abc", "zz"], params={"max_new_tokens": 4})
    assert outputs == [_greedy(base_bundle, "abc", 4), _greedy(base_bundle, "zz", 4)]
    assert all(len(text.split()) == 4 for text in outputs)  # 4 new characters, space-joined
    inner = loaded.unwrap_python_model().bundle.model
    ids = torch.tensor([[2, 3, 4]])
    torch.testing.assert_close(inner(ids).logits, base_bundle.model(ids).logits)

    params = {p.name: p.default for p in loaded.metadata.get_params_schema().params}
    assert params == {"max_new_tokens": 32}  # no bits for the base model


def test_logged_from_code_with_the_bundle_as_artifact(mlflow_store, base_bundle):
    with mlflow.start_run():
        info = register_model(base_bundle, "base_lm")
    flavor = _mlmodel(info["model_uri"])["flavors"]["python_function"]
    assert flavor["model_code_path"].endswith("causal_lm.py")
    assert "python_model" not in flavor, "no cloudpickled model"
    assert flavor["artifacts"]["model"]["path"] == "artifacts/model"
    bundle_dir = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{info['model_uri']}/artifacts/model"
    )
    names = {p.name for p in Path(bundle_dir).iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "router_pipelines.json"} <= names
    assert not any(name.endswith((".pkl", ".pt", ".bin")) for name in names)


def test_version_tags_description_and_tokenizer_artifact(mlflow_store, base_bundle):
    with mlflow.start_run() as run:
        info = register_model(
            base_bundle, "base_lm", tags={"train_loss": 1.5, "steps": 3}, description="tiny"
        )
    client = mlflow.MlflowClient()
    version = client.get_model_version("base_lm", info["version"])
    assert version.tags == {"family": "causal_lm", "train_loss": "1.5", "steps": "3"}
    assert version.description == "tiny"
    assert "tokenizer" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_switchable_model_runs_at_the_asked_width(mlflow_store, switchable_bundle):
    with mlflow.start_run():
        info = register_model(switchable_bundle, "switchable_lm", wrapper="switchable")
    loaded = mlflow.pyfunc.load_model(info["model_uri"])
    params = {p.name: p.default for p in loaded.metadata.get_params_schema().params}
    assert params == {"max_new_tokens": 32, "bits": "fp"}

    model = switchable_bundle.model
    expected = {}
    for bits in ("2", "4", "fp"):
        model.set_precision(None if bits == "fp" else int(bits))
        expected[bits] = _greedy(switchable_bundle, "abc", 5)
        assert loaded.predict(["abc"], params={"max_new_tokens": 5, "bits": bits}) == [
            expected[bits]
        ]
    assert len(set(expected.values())) == 3, "the widths must differ for this test to mean much"
    assert loaded.predict(["abc"], params={"max_new_tokens": 5}) == [expected["fp"]]  # default
    with pytest.raises(ValueError, match="bits: '9' is not allowed"):
        loaded.predict(["abc"], params={"bits": "9"})
    with pytest.raises(ValueError, match="bits"):  # a width the model was not built with
        loaded.predict(["abc"], params={"bits": "3"})


def test_bad_max_new_tokens_is_named(mlflow_store, base_bundle):
    with mlflow.start_run():
        info = register_model(base_bundle, "base_lm")
    loaded = mlflow.pyfunc.load_model(info["model_uri"])
    with pytest.raises(ValueError, match="max_new_tokens: must be an integer >= 1, got 0"):
        loaded.predict(["abc"], params={"max_new_tokens": 0})


def test_long_prompts_stop_at_the_context_length(mlflow_store, base_bundle):
    with mlflow.start_run():
        info = register_model(base_bundle, "base_lm")
    loaded = mlflow.pyfunc.load_model(info["model_uri"])
    prompt = "ab" * 40  # 80 tokens, the context is 32
    (continuation,) = loaded.predict([prompt], params={"max_new_tokens": 10})
    assert len(continuation.split()) == 1  # 31 prompt tokens kept, room for one more


def test_without_a_run_says_how_to_get_one(mlflow_store, base_bundle):
    with pytest.raises(RuntimeError, match="needs an active MLflow run"):
        register_model(base_bundle, "base_lm")


def test_bad_arguments_fail_before_anything_is_logged(mlflow_store, base_bundle, tmp_path):
    with mlflow.start_run() as run:
        with pytest.raises(ValueError, match=r"wrapper: 'switchable' serves \['switchable'\]"):
            register_model(base_bundle, "base_lm", wrapper="switchable")
        with pytest.raises(ValueError, match="unknown pyfunc wrapper 'nope'"):
            register_model(base_bundle, "base_lm", wrapper="nope")
        with pytest.raises(ValueError, match="name: expected a non-empty string"):
            register_model(base_bundle, " ")
        with pytest.raises(ValueError, match="extra_artifacts: the key 'model'"):
            register_model(base_bundle, "base_lm", extra_artifacts={"model": str(tmp_path)})
        with pytest.raises(ValueError, match="extra_artifacts: no such file"):
            register_model(base_bundle, "base_lm", extra_artifacts={"x": str(tmp_path / "no")})
    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []
    assert client.list_artifacts(run.info.run_id) == []


def test_extra_artifacts_ship_inside_the_model(mlflow_store, base_bundle, tmp_path):
    table = tmp_path / "pareto.json"
    table.write_text('[{"name": "fp"}]')
    with mlflow.start_run():
        info = register_model(base_bundle, "base_lm", extra_artifacts={"pareto": str(table)})
    flavor = _mlmodel(info["model_uri"])["flavors"]["python_function"]
    assert set(flavor["artifacts"]) == {"model", "pareto"}
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{info['model_uri']}/{flavor['artifacts']['pareto']['path']}"
    )
    assert Path(local).read_text() == '[{"name": "fp"}]'


def test_every_wrapper_declares_a_signature_and_serves_its_family():
    for name, wrapper in WRAPPERS.items():
        assert wrapper.code_path.is_file(), name
        # routed_lm serves a switchable model (the rungs it routes between), not its own family.
        assert name in wrapper.families or name == "routed_lm"
        params = {p.name for p in wrapper.signature().params.params}
        # Every model that writes text takes max_new_tokens; the query router only scores.
        if name == "query_router":
            assert "target_share" in params
        else:
            assert "max_new_tokens" in params, name
