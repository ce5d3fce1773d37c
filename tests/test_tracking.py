import mlflow
import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.models.bundle import ModelBundle
from router_pipelines.tracking import loss_curve_figure, metric_logger, register_bundle


@pytest.fixture
def bundle(char_tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=1,
        n_embd=16,
        n_head=2,
        vocab_size=28,
        n_positions=32,
        pad_token_id=0,
        eos_token_id=1,
    )
    return ModelBundle(model=GPT2LMHeadModel(config), tokenizer=char_tokenizer)


def test_register_bundle_creates_versions_loadable_as_pyfunc(mlflow_store, bundle):
    with mlflow.start_run() as run:
        first = register_bundle(bundle, "base_lm", tags={"train_loss": 1.5})
        second = register_bundle(bundle, "base_lm")
    assert (first["version"], second["version"]) == ("1", "2")
    assert first["run_id"] == run.info.run_id
    client = mlflow.MlflowClient()
    assert client.get_model_version("base_lm", "1").tags["train_loss"] == "1.5"
    assert "tokenizer" in {a.path for a in client.list_artifacts(run.info.run_id)}

    loaded = mlflow.pyfunc.load_model("models:/base_lm/2")
    outputs = loaded.predict(["abc"], params={"max_new_tokens": 3})
    assert len(outputs) == 1 and isinstance(outputs[0], str)
    inner = loaded.unwrap_python_model().bundle.model
    ids = torch.tensor([[2, 3, 4]])
    torch.testing.assert_close(inner(ids).logits, bundle.model.eval()(ids).logits)


def test_register_bundle_without_a_run_says_how_to_get_one(mlflow_store, bundle):
    with pytest.raises(RuntimeError, match="needs an active MLflow run"):
        register_bundle(bundle, "base_lm")


def test_metric_logger_logs_history_only_inside_a_run(mlflow_store):
    log = metric_logger(prefix="train/")
    log({"loss": 2.0}, 0)  # no run: silently nothing
    with mlflow.start_run() as run:
        log({"loss": 2.0}, 1)
        log({"loss": 1.0}, 2)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 2.0), (2, 1.0)]


def test_loss_curve_figure_plots_train_and_eval():
    figure = loss_curve_figure(
        {
            "train_loss": [(0, 3.0), (10, 2.0)],
            "eval_loss": [(10, 2.5)],
            "lr": [(0, 1e-3), (10, 5e-4)],
        },
        "t",
    )
    labels = [line.get_label() for line in figure.axes[0].get_lines()]
    assert labels == ["train loss", "eval loss"]
