"""The depth-routing DAG on an in-memory catalog: routed + dense training → evaluation."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from router_pipelines.data.token_store import TokenBlocks
from router_pipelines.datasets import ModelVersionsDataset
from router_pipelines.models.depth_routing_lm import DepthRoutingLM
from router_pipelines.pipelines.depth_routing import create_pipeline

CONF = Path(__file__).resolve().parents[3] / "conf"
SEQ_LEN, VOCAB = 32, 64


def _params(tmp_path: Path, **model) -> dict:
    text = (CONF / "base/parameters_depth_routing.yml").read_text()
    text = text.replace("${globals:paths.checkpoints}", str(tmp_path))
    params = copy.deepcopy(yaml.safe_load(text)["depth_routing"])
    params["model"].update(preset="debug", max_positions=64, predictor_hidden_size=8, **model)
    params["training"].update(
        max_steps=8,
        batch_size=4,
        learning_rate=3e-3,
        warmup_steps=1,
        eval_steps=4,
        eval_max_batches=2,
        save_steps=4,
        logging_steps=2,
        progress_bar=False,
    )
    params["evaluation"].update(
        batch_size=4, max_batches=2, speed_batch_size=1, speed_iters=1, decode_tokens=4
    )
    params["register"]["enabled"] = False
    return params


def _tokenizer():
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0"
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def _tokens(n: int, seed: int) -> TokenBlocks:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, VOCAB, size=n)  # a learnable pattern: rows count up
    rows = (starts[:, None] + np.arange(SEQ_LEN)[None, :]) % VOCAB
    return TokenBlocks.from_arrays(rows, fingerprint=f"counting-{n}-{seed}")


class KeptDataset(MemoryDataset):
    def _release(self) -> None:
        pass


OUTPUTS = (
    "model",
    "best_model",
    "dense_model",
    "training_summary",
    "dense_summary",
    "evaluation",
    "routing_report",
    "routing_curve",
)


def _run(params: dict, model_type: str | None, stores: Path | None = None) -> dict:
    """The pipeline without registration; model stores (empty folders by default) under
    ``stores`` for ``source: auto``; the registry is never reached (``single_process`` look-ups
    find no registered name in an empty sqlite store)."""
    from router_pipelines.datasets import ModelRegistryDataset

    stores = stores or Path(params["training"]["output_dir"]) / "stores"
    catalog = DataCatalog({f"depth_routing.{name}": KeptDataset() for name in OUTPUTS})
    catalog["train_tokens"] = _tokens(64, seed=1)
    catalog["validation_tokens"] = _tokens(8, seed=2)
    catalog["tokenizer"] = _tokenizer()
    for name, folder in (
        ("saved_models", "final"),
        ("saved_best_models", "best"),
        ("saved_dense_models", "dense"),
    ):
        catalog[f"depth_routing.{name}"] = ModelVersionsDataset(str(stores / folder)).load()
    catalog["model_registry"] = ModelRegistryDataset().load()
    for group, values in params.items():
        catalog[f"params:depth_routing.{group}"] = values
    pipeline = create_pipeline(model_type=model_type)
    pipeline = pipeline.only_nodes(
        *[
            n.name
            for n in pipeline.nodes
            if not n.name.endswith(("register_depth_routing", "promote_champion"))
        ]
    )
    torch.manual_seed(0)
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog[f"depth_routing.{name}"].load() for name in OUTPUTS}


@pytest.mark.parametrize(("model_type", "pipeline_type"), [("mod", "mod"), ("mod", "dtf")])
def test_slice_trains_routed_and_dense_side_by_side(
    tmp_path, mlflow_store, model_type, pipeline_type
):
    """``--pipeline=dtf`` fixes the type whatever ``model_type`` says."""
    params = _params(tmp_path, capacity_gamma=0.25)
    params["model_type"] = model_type
    out = _run(params, pipeline_type)
    summary, dense = out["training_summary"], out["dense_summary"]
    assert isinstance(out["model"].model, DepthRoutingLM)
    assert out["model"].model.routing_config.model_type == pipeline_type
    assert out["best_model"].family == "depth_routing"
    assert summary["model_type"] == pipeline_type and summary["global_step"] == 8
    assert dense["global_step"] == 8 and dense["model_type"] == "dense"
    assert summary["tokens_seen"] == dense["tokens_seen"]  # same data and steps
    runs = Path(summary["run_dir"]).parent, Path(dense["run_dir"]).parent
    assert [p.name for p in runs] == [pipeline_type, "dense"]
    assert (Path(summary["run_dir"]) / "checkpoint-8").is_dir()
    assert (Path(summary["run_dir"]) / "best").is_dir()
    history = dict(map(tuple, out["model"].metadata["history"]["eval_loss"]))
    assert history[8] < np.log(VOCAB)  # it learns the counting pattern
    table = out["evaluation"]
    assert list(zip(table["model"], table["routing"], strict=True)) == [
        ("dense", "dense"),
        (pipeline_type, "topk"),
        (pipeline_type, "causal"),
    ]
    assert (table["validation_bits_per_byte"] > 0).all()
    routed_row = table.iloc[1]
    assert routed_row["flops_blocks"] < table.iloc[0]["flops_blocks"]
    assert routed_row["flops_lm_head"] == table.iloc[0]["flops_lm_head"]
    report = out["routing_report"]
    stats = report["router_statistics"]
    assert [row["layer"] for row in stats["layers"]] == [1]
    assert stats["topk_share"] == pytest.approx(0.25)
    assert 0 < stats["causal_share"] < 0.6  # calibrated: about γ, not all or nothing
    comparison = report["comparison"]
    assert comparison["flops_ratio_total"] < 1
    assert comparison["loss_ratio_equal_steps"] == pytest.approx(
        table.iloc[1]["validation_loss"] / table.iloc[0]["validation_loss"]
    )
    assert "step_time_ratio" in comparison and "generate_speedup" in comparison
    figure = out["routing_curve"]  # router statistics over training, one panel per statistic
    titles = [axis.get_title() for axis in figure.axes]
    assert ("surprise gates (mean over Dynamic layers)" in titles) == (pipeline_type == "dtf")
    assert "causal predictor vs top-k membership" in titles
    for axis in figure.axes:
        assert axis.get_ylabel() and axis.get_legend() is not None


def test_an_unchanged_rerun_reuses_the_saved_model_and_a_changed_setting_retrains(
    tmp_path, mlflow_store
):
    """``source: auto``: the saved best (and final) model with the same identity is handed on
    without training; a changed result-affecting setting trains anew; ``source: catalog``
    names what differs."""
    from kedro.io import Version

    from router_pipelines.datasets import PretrainedModelDataset

    stores = tmp_path / "stores"
    params = _params(tmp_path, capacity_gamma=0.25)
    params["dense_baseline"] = {"enabled": False}
    params["evaluation"]["speed"] = False
    first = _run(params, "mod", stores)
    assert first["training_summary"]["origin"] == "train"
    for name, folder in (("model", "final"), ("best_model", "best")):
        PretrainedModelDataset(str(stores / folder), version=Version(None, None)).save(first[name])

    again = _run(params, "mod", stores)
    summary = again["training_summary"]
    assert summary["origin"] == "catalog" and summary["reused_from"].startswith(
        str(stores / "best")
    )
    assert summary["fingerprint"] == first["training_summary"]["fingerprint"]
    assert again["best_model"].source_dir is not None  # loaded, not trained: nothing re-saved
    for a, b in zip(
        again["best_model"].model.state_dict().values(),
        first["best_model"].model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    runs = Path(first["training_summary"]["run_dir"]).parent
    assert len(list(runs.iterdir())) == 1  # the engine was not started again
    assert again["routing_report"]["router_statistics"]["topk_share"] == pytest.approx(0.25)

    changed = copy.deepcopy(params)
    changed["loss"]["router_aux_weight"] = 0.02
    retrained = _run(changed, "mod", stores)
    assert retrained["training_summary"]["origin"] == "train"
    assert retrained["training_summary"]["fingerprint"] != summary["fingerprint"]

    changed["source"] = {"source": "catalog"}
    with pytest.raises(
        Exception, match=r"depth_routing.source.source=catalog: .*router_aux_weight"
    ):
        _run(changed, "mod", stores)


def test_a_saved_dense_baseline_with_the_same_identity_is_reused(tmp_path, mlflow_store):
    """The dense baseline is persisted (``depth_routing.dense_model``): an unchanged re-run
    reuses it instead of training it again; ``source: train`` trains it again."""
    from kedro.io import Version

    from router_pipelines.datasets import OptionalModelDataset

    stores = tmp_path / "stores"
    params = _params(tmp_path, capacity_gamma=0.25)
    params["evaluation"]["speed"] = False
    first = _run(params, "mod", stores)
    assert first["dense_summary"]["origin"] == "train"
    OptionalModelDataset(str(stores / "dense"), version=Version(None, None)).save(
        first["dense_model"]
    )
    dense_runs = Path(first["dense_summary"]["run_dir"]).parent

    again = _run(params, "mod", stores)
    summary = again["dense_summary"]
    assert summary["origin"] == "catalog" and summary["reused_from"].startswith(str(stores))
    assert summary["global_step"] == first["dense_summary"]["global_step"]
    assert len(list(dense_runs.iterdir())) == 1, "the dense training did not start again"
    for a, b in zip(
        again["dense_model"].model.state_dict().values(),
        first["dense_model"].model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(a, b)
    dense_row = again["evaluation"].iloc[0]
    assert dense_row["model"] == "dense"
    assert dense_row["validation_loss"] == pytest.approx(
        first["evaluation"].iloc[0]["validation_loss"]
    )

    params["source"] = {"source": "train"}
    retrained = _run(params, "mod", stores)
    assert retrained["dense_summary"]["origin"] == "train"
    assert len(list(dense_runs.iterdir())) == 2


def test_transfer_swaps_routed_blocks_into_a_local_qwen2(tmp_path, mlflow_store):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )
    pretrained = Qwen2ForCausalLM(config)
    pretrained.save_pretrained(tmp_path / "qwen2")
    params = _params(tmp_path, name_or_path=str(tmp_path / "qwen2"), capacity_gamma=0.5)
    params.update(mode="transfer", dense_baseline={"enabled": False})
    params["training"].update(max_steps=2, eval_steps=2, save_steps=2, learning_rate=1e-9)
    out = _run(params, "dtf")
    model = out["model"].model
    assert out["training_summary"]["mode"] == "transfer"
    assert model.routed_layer_indices() == [1, 3]  # (0, 1) and (2, 3) pairs
    torch.testing.assert_close(  # lr 1e-9: the pretrained weights, inside the routed model
        model.model.model.layers[0].decision.mlp.up_proj.weight,
        pretrained.model.layers[0].mlp.up_proj.weight,
    )
    assert list(out["evaluation"]["model"]) == ["dtf", "dtf"]  # no dense row
    assert out["routing_report"]["comparison"]["note"].startswith("dense_baseline disabled")


@pytest.mark.parametrize(
    ("model_type", "architecture"),
    [
        ("mod", "llama"),
        ("dtf", "llama"),
        ("dtf", "qwen2"),
    ],
)
def test_the_champion_rescoring_matches_the_evaluation_of_the_same_model(
    tmp_path, mlflow_store, monkeypatch, model_type, architecture
):
    """promotion re-scores a routed champion with ``rescore_depth_routing``: the best model the
    slice just evaluated, saved and loaded back as the registry does (and left in the causal
    routing it is served with), gets the registration's headline numbers on the same
    validation split, with nothing logged and no dense baseline; other data scores otherwise;
    a model of another tokenizer, or one that does not route, is refused."""
    import router_pipelines.tracking as tracking
    from router_pipelines.models.bundle import ModelBundle, load_bundle, save_bundle
    from router_pipelines.pipelines.depth_routing.config import HEADLINE_METRICS
    from router_pipelines.pipelines.depth_routing.evaluation_nodes import (
        registered_metrics,
        rescore_depth_routing,
    )

    params = _params(tmp_path, capacity_gamma=0.25, architecture=architecture)
    params["dense_baseline"] = {"enabled": False}
    params["evaluation"]["speed"] = False
    out = _run(params, model_type)
    report = out["routing_report"]
    registered = registered_metrics(  # what register_depth_routing reports
        out["training_summary"], report["rows"], report["router_statistics"]
    )
    save_bundle(out["best_model"], tmp_path / "champion")
    champion = load_bundle(tmp_path / "champion")
    champion.model.set_routing_mode("causal")

    def no_logging(*args, **kwargs):
        raise AssertionError("the champion's re-scoring logged to MLflow")

    monkeypatch.setattr(tracking, "log_metrics", no_logging)
    monkeypatch.setattr(tracking, "log_table", no_logging)
    evaluation, tokenizer = params["evaluation"], _tokenizer()
    rescored = rescore_depth_routing(champion, _tokens(8, seed=2), tokenizer, evaluation)
    assert list(rescored) == list(HEADLINE_METRICS)
    assert rescored == pytest.approx(registered, rel=1e-6)
    assert champion.model.routing_mode == "causal"  # left as it was served
    other = rescore_depth_routing(champion, _tokens(8, seed=3), tokenizer, evaluation)
    assert other["flops_per_token"] == rescored["flops_per_token"]  # analytic: the model's
    assert other["validation_bits_per_byte"] != pytest.approx(
        rescored["validation_bits_per_byte"], rel=1e-6
    )

    promote = next(
        n for n in create_pipeline(model_type).nodes if n.name.endswith("promote_champion")
    )
    assert promote.inputs[3:] == [
        "validation_tokens",
        "tokenizer",
        "params:depth_routing.evaluation",
    ]

    vocab = {f"t{i}": i for i in range(VOCAB + 1)}
    retrained = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0"
    )
    with pytest.raises(ValueError, match=r"its tokenizer \(64 tokens\) is not the data's"):
        rescore_depth_routing(champion, _tokens(8, seed=2), retrained, evaluation)
    dense = ModelBundle(model=champion.model.model, tokenizer=tokenizer, metadata={})
    with pytest.raises(ValueError, match="family 'causal_lm' .* not a 'depth_routing'"):
        rescore_depth_routing(dense, _tokens(8, seed=2), tokenizer, evaluation)
