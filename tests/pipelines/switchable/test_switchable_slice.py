"""The switchable part of the DAG on an in-memory catalog: train → evaluate → Pareto."""

from __future__ import annotations

import copy
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.switchable import SwitchableLM
from router_pipelines.pipelines.switchable import create_pipeline
from router_pipelines.pipelines.switchable.config import parse_switchable_params
from router_pipelines.pipelines.switchable.nodes import (
    _from_registry,
    _registered_if_any,
    provide_base_model,
)
from router_pipelines.tracking import register_bundle

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


def _tokens(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    # A learnable pattern: each row counts up from a random start.
    starts = rng.integers(0, VOCAB, size=n)
    rows = [[(s + i) % VOCAB for i in range(SEQ_LEN)] for s in starts]
    return pd.DataFrame({"input_ids": rows, "labels": rows, "attention_mask": [[1] * SEQ_LEN] * n})


class KeptDataset(MemoryDataset):
    """A MemoryDataset the runner cannot release, so the test can read intermediate outputs."""

    def _release(self) -> None:
        pass


OUTPUTS = (
    "switchable_model",
    "switchable_training_summary",
    "bit_configuration_results",
    "switchable_pareto",
    "switchable_precision_results",
)


def _run(params: dict, base_model: ModelBundle) -> dict:
    catalog = DataCatalog({name: KeptDataset() for name in OUTPUTS})
    catalog["base_model"] = base_model
    catalog["train_tokens"] = _tokens(64, seed=1)
    catalog["validation_tokens"] = _tokens(16, seed=2)
    catalog["params:switchable"] = params
    pipeline = create_pipeline().only_nodes(
        "train_switchable", "evaluate_bit_configurations", "pareto_analysis"
    )
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog[name].load() for name in OUTPUTS}


@pytest.mark.parametrize(
    ("strategy", "expected_steps"),
    [("joint", {"8bit": 6, "4bit": 6, "2bit": 6}), ("cyclic", {"2bit": 3, "4bit": 3, "8bit": 0})],
)
def test_slice_trains_evaluates_and_finds_the_front(tmp_path, base_model, strategy, expected_steps):
    params = _switchable_params(tmp_path, switch_strategy=strategy, switch_interval=3)
    teacher_before = {k: v.clone() for k, v in base_model.model.state_dict().items()}
    out = _run(params, base_model)

    model = out["switchable_model"].model
    assert isinstance(model, SwitchableLM) and out["switchable_model"].family == "switchable"
    assert out["switchable_training_summary"]["steps_per_width"] == expected_steps
    for key, value in base_model.model.state_dict().items():
        torch.testing.assert_close(value, teacher_before[key], rtol=0, atol=0)  # teacher frozen

    table = out["bit_configuration_results"]
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

    pareto = out["switchable_pareto"]
    assert (pareto["pareto_bits"] | pareto["pareto_speed"]).all()
    front = set(pareto.loc[pareto["pareto_bits"], "name"])
    assert "uniform_2bit" in front, "the fewest bits is never dominated on the bits front"
    results = out["switchable_precision_results"]
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
    model = results["switchable_model"].model
    assert set(model.quant_embeddings()) == {"transformer.wte", "transformer.wpe"}
    assert model.model.lm_head.weight_quantizer is model.model.transformer.wte.weight_quantizer
    table = results["bit_configuration_results"].set_index("name")
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


def test_tied_preset_mismatch_stops_before_the_base_model_trains(base_model):
    pretrain = yaml.safe_load((CONF / "base/parameters_pretrain.yml").read_text())["pretrain"]
    switchable = yaml.safe_load((CONF / "base/parameters_switchable.yml").read_text())
    switchable = switchable["switchable"]
    switchable["base"]["source"] = "train"
    switchable["model"]["quantize_embeddings"] = True
    empty = pd.DataFrame({"input_ids": [], "labels": [], "attention_mask": []})
    with pytest.raises(ValueError, match=r"switchable\.model: quantize_lm_head \(False\)"):
        provide_base_model(empty, empty, base_model.tokenizer, None, pretrain, switchable)


def test_registry_lookup_of_auto_and_registry_sources(mlflow_store, base_model):
    switchable = yaml.safe_load((CONF / "base/parameters_switchable.yml").read_text())
    params = parse_switchable_params(switchable["switchable"])
    assert _registered_if_any(params) is None  # nothing registered: auto trains
    with mlflow.start_run():
        register_bundle(base_model, "base_lm")
    loaded = _registered_if_any(params)
    assert loaded is not None and loaded.source_dir is None
    assert loaded.tokenizer.get_vocab() == base_model.tokenizer.get_vocab()
    switchable["switchable"]["base"]["registry_version"] = "@champion"
    with pytest.raises(ValueError, match=r"registry_version: cannot load models:/base_lm@champion"):
        _from_registry(parse_switchable_params(switchable["switchable"]))
