"""ModelRegistryDataset: registered versions looked up and loaded from safetensors only."""

from __future__ import annotations

import pickle

import mlflow
import pytest
import torch
from kedro.io.core import DatasetError
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.datasets import ModelRegistryDataset
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.serving import register_model


@pytest.fixture(scope="module")
def registered(tmp_path_factory, char_tokenizer_module):
    """One store for the module: ``base_lm`` versions 1 and 2 (2 has other weights and the
    alias ``champion``). Returns the store's URI, the run id and version 2's bundle."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=28))
    bundle = ModelBundle(model.eval(), char_tokenizer_module, {"note": "x"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        mlflow.set_experiment("tests")
        with mlflow.start_run() as run:
            register_model(bundle, "base_lm", tags={"fingerprint": "aaa"})
            with torch.no_grad():
                bundle.model.transformer.wte.weight.add_(1.0)
            register_model(bundle, "base_lm", tags={"fingerprint": "bbb"}, description="second")
        mlflow.MlflowClient().set_registered_model_alias("base_lm", "champion", "2")
        yield uri, run.info.run_id, bundle


@pytest.fixture(scope="module")
def char_tokenizer_module():
    from tiny_models import char_tokenizer

    return char_tokenizer()


@pytest.fixture
def registry(registered):
    mlflow.set_tracking_uri(registered[0])  # other modules' tests move MLflow elsewhere
    mlflow.set_registry_uri(registered[0])
    return ModelRegistryDataset().load()


def test_the_handle_is_bound_to_the_current_registry(mlflow_store):
    registry = ModelRegistryDataset().load()
    assert registry.registry_uri == mlflow_store
    assert registry.versions("base_lm") == []


def test_versions_newest_first_with_tags(registered, registry):
    versions = registry.versions("base_lm")
    assert [v.version for v in versions] == ["2", "1"]
    assert versions[0].tags["fingerprint"] == "bbb"
    assert versions[0].run_id == registered[1]
    assert versions[0].uri == "models:/base_lm/2"
    assert versions[0].description == "second"


@pytest.mark.parametrize(
    ("asked", "expected"), [("latest", "2"), ("@champion", "2"), (1, "1"), ("1", "1")]
)
def test_get_by_latest_alias_or_number(registry, asked, expected):
    assert registry.get("base_lm", asked).version == expected


@pytest.mark.parametrize(
    ("name", "version"), [("nope", "latest"), ("base_lm", "7"), ("base_lm", "@nope"), ("nope", 1)]
)
def test_missing_versions_name_the_name_version_and_registry(registered, registry, name, version):
    with pytest.raises(ValueError) as error:
        registry.get(name, version)
    message = str(error.value)
    assert repr(name) in message and repr(str(version)) in message and registered[0] in message


def test_bad_versions_are_named(registry):
    with pytest.raises(ValueError, match="version: expected a version number"):
        registry.get("base_lm", "newest")
    with pytest.raises(ValueError, match="name: a registered model name cannot contain a quote"):
        registry.versions("x' or name like '%")


def test_load_reads_safetensors_and_never_unpickles_or_runs_model_code(
    registered, registry, monkeypatch
):
    bundle = registered[2]

    def forbidden(*args, **kwargs):
        raise AssertionError("the registry must not be read through pickle or model code")

    monkeypatch.setattr(mlflow.pyfunc, "load_model", forbidden)
    monkeypatch.setattr("mlflow.models.utils._load_model_code_path", forbidden)
    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)

    loaded = registry.get("base_lm", "2").load()
    assert loaded.source_dir is None  # a registry copy: saved as a new catalog version
    assert loaded.metadata == {"family": "causal_lm", "note": "x"}
    ids = torch.tensor([[2, 3, 4]])
    torch.testing.assert_close(loaded.model.eval()(ids).logits, bundle.model(ids).logits)
    first = registry.get("base_lm", 1).load()
    assert not torch.equal(first.model.transformer.wte.weight, bundle.model.transformer.wte.weight)


def test_a_model_without_a_bundle_is_refused(mlflow_store, tmp_path):
    code = tmp_path / "identity.py"
    code.write_text("import mlflow\nmlflow.models.set_model(lambda model_input: model_input)\n")
    with mlflow.start_run():
        mlflow.pyfunc.log_model(
            name="other", python_model=str(code), pip_requirements=[], registered_model_name="other"
        )
    version = ModelRegistryDataset().load().get("other", "latest")
    with pytest.raises(ValueError, match="no 'model' bundle artifact"):
        version.load()


def test_is_read_only():
    with pytest.raises(DatasetError, match="read-only"):
        ModelRegistryDataset().save(object())
