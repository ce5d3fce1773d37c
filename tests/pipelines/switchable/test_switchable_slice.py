"""The switchable part of the DAG on an in-memory catalog: train → evaluate → Pareto, and reuse."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.io.core import Version
from kedro.runner import SequentialRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from router_pipelines.data.token_store import TokenBlocks
from router_pipelines.datasets import ModelRegistryDataset, ModelVersionsDataset
from router_pipelines.datasets.pretrained import PretrainedModelDataset
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.switchable import SwitchableLM
from router_pipelines.pipelines.switchable import create_pipeline

CONF = Path(__file__).resolve().parents[3] / "conf"
SEQ_LEN, VOCAB = 16, 64


def _switchable_params(tmp_path: Path, **training) -> dict:
    params = yaml.safe_load((CONF / "base/parameters_switchable.yml").read_text())["switchable"]
    params = copy.deepcopy(params)
    params["training"].update(
        output_dir=str(tmp_path / "ckpt"),
        max_steps=6,
        batch_size=4,
        warmup_steps=1,
        eval_steps=3,
        eval_max_batches=2,
        save_steps=3,
        logging_steps=2,
        progress_bar=False,
        **training,
    )
    evaluation = params["experiment"]["evaluation"]
    evaluation["layer_wise"] = {"attn8_mlp4": [{"attn_bits": 8, "mlp_bits": 4}] * 2}
    evaluation.update(random_mixes=1, max_batches=2)
    evaluation["speed"].update(decode_tokens=4, prefill_batch_size=1, prefill_seq_len=8, iters=1)
    params["experiment"]["register"]["enabled"] = False
    return params


@pytest.fixture
def base_model() -> ModelBundle:
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0"
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_inner=64, vocab_size=VOCAB, n_positions=32
    )
    return ModelBundle(GPT2LMHeadModel(config), tokenizer, {"family": "causal_lm"})


def _tokens(n: int, seed: int) -> TokenBlocks:
    rng = np.random.default_rng(seed)
    # A learnable pattern: each row counts up from a random start.
    starts = rng.integers(0, VOCAB, size=n)
    rows = (starts[:, None] + np.arange(SEQ_LEN)[None, :]) % VOCAB
    return TokenBlocks.from_arrays(rows, fingerprint=f"counting-{n}-{seed}")


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so the test can read intermediate outputs."""

    def _release(self) -> None:
        pass


OUTPUTS = (
    "switchable.model",
    "switchable.training_summary",
    "switchable.evaluation",
    "switchable.pareto",
    "switchable.precision_results",
)


def _catalog(params: dict, base_model: ModelBundle, store: Path) -> DataCatalog:
    catalog = DataCatalog({name: KeptDataset() for name in OUTPUTS})
    catalog["pretrain.model"] = base_model
    catalog["train_tokens"] = _tokens(64, seed=1)
    catalog["validation_tokens"] = _tokens(16, seed=2)
    catalog["switchable.saved_models"] = ModelVersionsDataset(str(store)).load()
    catalog["model_registry"] = ModelRegistryDataset().load()
    for group, values in params.items():
        catalog[f"params:switchable.{group}"] = values
    catalog["params:switchable.experiment.evaluation"] = params["experiment"]["evaluation"]
    catalog["params:switchable.experiment.register"] = params["experiment"]["register"]
    return catalog


def _run(params: dict, base_model: ModelBundle, store: Path | None = None) -> dict:
    store = store or Path(params["training"]["output_dir"]).parent / "store"
    catalog = _catalog(params, base_model, store)
    pipeline = create_pipeline().only_nodes(
        "switchable.train_switchable",
        "switchable.evaluate_bit_configurations",
        "switchable.pareto_analysis",
    )
    SequentialRunner().run(pipeline, catalog)
    return {name.removeprefix("switchable."): catalog[name].load() for name in OUTPUTS}


@pytest.mark.parametrize(
    ("strategy", "expected_steps"),
    [("joint", {"8bit": 6, "4bit": 6, "2bit": 6}), ("cyclic", {"2bit": 3, "4bit": 3, "8bit": 0})],
)
def test_slice_trains_evaluates_and_finds_the_front(tmp_path, base_model, strategy, expected_steps):
    params = _switchable_params(tmp_path, switch_strategy=strategy, switch_interval=3)
    teacher_before = {k: v.clone() for k, v in base_model.model.state_dict().items()}
    out = _run(params, base_model)

    model = out["model"].model
    assert isinstance(model, SwitchableLM) and out["model"].family == "switchable"
    assert out["training_summary"]["steps_per_width"] == expected_steps
    for key, value in base_model.model.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key], rtol=0, atol=0)  # teacher frozen

    table = out["evaluation"]
    assert list(table["name"]) == [
        "uniform_2bit",
        "uniform_4bit",
        "uniform_8bit",
        "fp",
        "attn8_mlp4",
        "random_0",
    ]
    assert (table["perplexity"] > 1).all() and table["perplexity"].notna().all()
    bits = table.set_index("name")["effective_bits"]
    assert bits["uniform_2bit"] < bits["attn8_mlp4"] < bits["uniform_8bit"] < bits["fp"] == 16
    # in_features is 32 or 64 here, one fp16 scale per row: 2 + 16/in on average
    assert 2 + 16 / 64 <= bits["uniform_2bit"] <= 2 + 16 / 32
    assert table.set_index("name")["compression_ratio"]["fp"] == pytest.approx(1.0)

    pareto = out["pareto"]
    assert (pareto["pareto_bits"] | pareto["pareto_speed"]).all()
    front = set(pareto.loc[pareto["pareto_bits"], "name"])
    assert "uniform_2bit" in front, "the fewest bits is never dominated on the bits front"
    results = out["precision_results"]
    assert set(results["pareto_fronts"]["pareto_bits"]) == front
    assert len(results["configurations"]) == len(table)


def test_bad_parameters_stop_the_slice_before_training(tmp_path, base_model):
    params = _switchable_params(tmp_path)
    params["model"]["bit_widths"] = [2, 4, 9]
    with pytest.raises(Exception, match="bit_widths: 9 is not a valid bit width") as error:
        _run(params, base_model)
    assert not (tmp_path / "ckpt").exists(), "nothing was trained or written"
    del error


def test_quantized_embeddings_and_head_train_and_are_evaluated(tmp_path, base_model):
    params = _switchable_params(tmp_path)
    params["model"].update(quantize_lm_head=True, quantize_embeddings=True)
    results = _run(params, base_model)
    model = results["model"].model
    assert set(model.quant_embeddings()) == {"transformer.wte", "transformer.wpe"}
    assert model.model.lm_head.weight_quantizer is model.model.transformer.wte.weight_quantizer
    table = results["evaluation"].set_index("name")
    # everything but the norms and biases is quantized: the whole model is near 2 bits
    assert table.loc["uniform_2bit", "model_bits_per_param"] < 3
    assert table.loc["uniform_8bit", "speed_kind"] == "packed_int8"
    assert np.isfinite(table["perplexity"]).all()


def test_tied_head_without_embeddings_stops_before_training(tmp_path, base_model):
    params = _switchable_params(tmp_path)
    params["model"]["quantize_lm_head"] = True
    with pytest.raises(Exception, match=r"switchable\.model: quantize_lm_head \(True\) and"):
        _run(params, base_model)
    assert not (tmp_path / "ckpt").exists(), "nothing was trained or written"


def test_a_compatible_saved_model_is_reused_and_a_changed_setting_retrains(
    tmp_path, base_model, mlflow_store
):
    """The provider node of a family that needs the switchable model (source params)."""
    params = _switchable_params(tmp_path)
    store = tmp_path / "store"
    first = _run(params, base_model, store)
    PretrainedModelDataset(str(store), version=Version(None, None)).save(first["model"])

    catalog = _catalog(params, base_model, store)
    catalog["params:router.switchable"] = {"source": "auto"}
    provide = create_pipeline(source="router.switchable").only_nodes(
        "switchable.provide_switchable_model"
    )
    SequentialRunner().run(provide, catalog)
    reused = catalog["switchable.training_summary"].load()
    assert reused["origin"] == "catalog" and reused["reused_from"].startswith(str(store))
    assert reused["global_step"] == first["training_summary"]["global_step"]

    changed = copy.deepcopy(params)
    changed["training"]["kd_weight"] = 0.5
    catalog = _catalog(changed, base_model, store)
    catalog["params:router.switchable"] = {"source": "catalog"}
    with pytest.raises(Exception, match=r"router.switchable.source=catalog: .*training.kd_weight"):
        SequentialRunner().run(provide, catalog)


def test_the_champion_rescoring_matches_the_evaluation_of_the_same_model(tmp_path, base_model):
    """promotion re-scores a switchable champion with ``rescore_switchable``: on the model the
    slice just evaluated it gives the same headline numbers as the full evaluation (the mixes
    and speed it skips do not change them), and it refuses a model of another tokenizer."""
    from router_pipelines.pipelines.switchable.evaluation_nodes import (
        headline_metrics,
        rescore_switchable,
    )

    params = _switchable_params(tmp_path, switch_strategy="joint")
    out = _run(params, base_model)
    evaluation = params["experiment"]["evaluation"]
    validation = _tokens(16, seed=2)
    tokenizer = base_model.tokenizer
    rescored = rescore_switchable(out["model"], validation, tokenizer, evaluation)
    assert rescored == pytest.approx(headline_metrics(out["evaluation"]), rel=1e-6)
    assert {"lowest_width_perplexity", "lowest_width_effective_bits"} <= set(rescored)

    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")),
        pad_token="a",
    )
    with pytest.raises(ValueError, match="its tokenizer .* is not the data's"):
        rescore_switchable(out["model"], validation, other, evaluation)
