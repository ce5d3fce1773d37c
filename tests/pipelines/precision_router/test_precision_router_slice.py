"""The precision-router part of the DAG on an in-memory catalog: multi-precision model (ptq
and the switchable model) → router training → evaluation at budgets."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from router_pipelines.data.token_store import TokenBlocks
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.precision_router import LayerwiseQuantizeForCausalLM
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM
from router_pipelines.pipelines.precision_router import create_pipeline
from router_pipelines.serving.precision_router import routed_continuations

CONF = Path(__file__).resolve().parents[3] / "conf"
SEQ_LEN, VOCAB = 16, 64
NODES = (
    "precision_router.provide_multi_precision_model",
    "precision_router.train_router",
    "precision_router.evaluate_router",
)
OUTPUTS = (
    "precision_router.model",
    "precision_router.training_summary",
    "precision_router.training_history",
    "precision_router.evaluation",
    "precision_router.router_results",
)


class KeptDataset(MemoryDataset):
    def _release(self) -> None:
        pass


def _params(tmp_path: Path) -> dict:
    params = yaml.safe_load((CONF / "base/parameters_precision_router.yml").read_text())
    params = copy.deepcopy(params["precision_router"])
    params["training"].update(
        output_dir=str(tmp_path / "ckpt"),
        num_examples=16,
        batch_size=4,
        num_epochs=2,
        learning_rate=1e-2,
        warmup_steps=0,
        eval_max_batches=2,
        progress_bar=False,
    )
    params["evaluation"].update(
        budgets=[3, 5], random_per_budget=1, calibration_examples=8, max_batches=2
    )
    params["quantized"].update(bit_widths=[2, 4, 8], calibration_examples=4)
    return params


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0"
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


def _base() -> ModelBundle:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_inner=64, vocab_size=VOCAB, n_positions=32
    )
    return ModelBundle(GPT2LMHeadModel(config).eval(), _tokenizer(), {"family": "causal_lm"})


def _tokens(n: int, seed: int) -> TokenBlocks:
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, VOCAB, size=n)
    rows = (starts[:, None] + np.arange(SEQ_LEN)[None, :]) % VOCAB
    return TokenBlocks.from_arrays(rows, fingerprint=f"counting-{n}-{seed}")


def _run(params: dict, switchable: ModelBundle | None = None) -> dict:
    catalog = DataCatalog({name: KeptDataset() for name in OUTPUTS})
    base = _base()
    catalog["pretrain.model"] = base
    catalog["switchable.model"] = switchable
    catalog["tokenizer"] = base.tokenizer
    catalog["train_tokens"] = _tokens(32, seed=1)
    catalog["validation_tokens"] = _tokens(8, seed=2)
    for group, values in params.items():
        catalog[f"params:precision_router.{group}"] = values
    SequentialRunner().run(create_pipeline().only_nodes(*NODES), catalog)
    return {name.removeprefix("precision_router."): catalog[name].load() for name in OUTPUTS}


def test_ptq_slice_trains_the_router_only_and_compares_every_method(tmp_path):
    params = _params(tmp_path)
    params["quantized"]["source"] = "ptq"
    params["evaluation"].update(sensitivity="fisher", budget_routers=True, budget_router_steps=2)
    out = _run(params)
    router = out["model"].model
    assert (
        isinstance(router, LayerwiseQuantizeForCausalLM)
        and out["model"].family == "precision_router"
    )
    summary = out["training_summary"]
    assert summary["global_step"] == 2 * (16 // 4)  # num_epochs * num_examples // batch_size
    assert summary["trainable_parameters"] == sum(p.numel() for p in router.router_parameters())
    assert summary["precisions"] == [2, 4, 8] and summary["quantized_source"] == "ptq"
    # a checkpoint per epoch, router weights only, and the best router by validation loss
    run_dir = Path(summary["run_dir"])
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-8"]
    assert (run_dir / "best" / "model.safetensors").is_file()
    # ... and by the seed's name: the routers alone at each epoch end
    epochs = sorted(p.name for p in run_dir.glob("router_checkpoint_epoch_*"))
    assert epochs == ["router_checkpoint_epoch_1", "router_checkpoint_epoch_2"]
    assert summary["epoch_checkpoints"] == [str(run_dir / name) for name in epochs]
    reloaded = LayerwiseQuantizeForCausalLM(copy.deepcopy(router.quantized))
    reloaded.load_router(run_dir / "router_checkpoint_epoch_2")  # a loadable router
    history = out["training_history"]
    assert [e["epoch"] for e in history["epochs"]] == [1, 2]
    assert {"train_ce", "train_precision_loss", "train_avg_precision", "eval_loss"} <= set(
        history["epochs"][0]
    )
    assert [s for s, _ in history["steps"]["train_layer_0_bits"]] == list(range(1, 9))

    table = out["evaluation"].set_index("name")
    kinds = set(table["kind"])
    assert {"fp", "uniform", "static_exact", "static_greedy", "static_searched", "router"} <= kinds
    assert {"random", "budget_router"} <= kinds  # a router per budget, from a static start
    assert table.loc["uniform_2bit", "mean_bits"] == 2 and table.loc["fp", "mean_bits"] == 16
    for budget in (3, 5):
        assert table.loc[f"static_exact_b{budget}", "mean_bits"] <= budget
        assert table.loc[f"static_searched_b{budget}", "mean_bits"] <= budget
        histogram = json.loads(table.loc[f"router_b{budget}", "bit_histogram"])
        assert len(histogram) == 2 and all(sum(h.values()) == pytest.approx(1) for h in histogram)
    assert np.isfinite(table["perplexity"]).all() and np.isfinite(table["bits_per_byte"]).all()
    results = out["router_results"]
    assert [entry["budget"] for entry in results["per_budget"]] == [3.0, 5.0]
    assert 0 < results["router_cost"]["router_flops_share"] < 1
    assert results["router_cost"]["router_time_share"] > 0
    assert "router_b3_perplexity" in results["headline"]
    assert "budget_router_b3_perplexity" in results["headline"]
    assert all("budget_router_bits_within_0.1" in e for e in results["per_budget"])

    # what the registered pyfunc returns: the continuation and the widths used per layer
    served = routed_continuations(out["model"], ["t1 t2 t3", "t9"], 3, price=0.0)
    assert list(served.columns) == ["continuation", "bits_per_layer", "mean_bits"]
    for bits, mean in zip(served["bits_per_layer"], served["mean_bits"], strict=True):
        layers = json.loads(bits)
        # per token (conf/base): a layer's bits are the mean over the prompt and new tokens
        assert len(layers) == 2 and all(2 <= b <= 8 for b in layers)
        assert mean == pytest.approx(sum(layers) / 2, abs=1e-3)  # equal-sized blocks
    lowest = routed_continuations(out["model"], ["t1 t2 t3"], 3, price=1e6)
    assert json.loads(lowest["bits_per_layer"][0]) == [2, 2]


def test_switchable_source_routes_the_switchable_model_without_changing_it(tmp_path):
    params = _params(tmp_path)
    base = _base()
    switchable = SwitchableLM.from_base(
        copy.deepcopy(base.model), SwitchableConfig(bit_widths=[2, 4, 8])
    )
    batch = torch.arange(SEQ_LEN)[None, :] % VOCAB
    switchable.initialize_quantizers(batch)
    before = {k: v.clone() for k, v in switchable.state_dict().items()}
    bundle = ModelBundle(switchable, base.tokenizer, {"family": "switchable"})
    out = _run(params, bundle)
    after = switchable.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the input model untouched
    assert not any(type(m).__name__ == "RoutedQuantLinear" for m in switchable.modules())
    assert out["training_summary"]["quantized_source"] == "switchable"


def test_num_examples_larger_than_the_data_stops_before_training(tmp_path):
    params = _params(tmp_path)
    params["quantized"]["source"] = "ptq"
    params["training"]["num_examples"] = 40
    with pytest.raises(Exception, match=r"num_examples: 40 .* larger than the 32 training rows"):
        _run(params)
    assert not (tmp_path / "ckpt").exists(), "nothing was trained or written"


def test_the_champion_rescoring_matches_the_evaluation_of_the_same_model(tmp_path, monkeypatch):
    """promotion re-scores a precision-router champion with ``rescore_precision_router``: the
    router the slice just evaluated, saved and loaded back as the registry does, gives the
    registration's metrics again on the same data (the random assignments it skips change no
    headline number), logs nothing, scores the model it is given, and refuses a bundle of
    another tokenizer or one that holds no router."""
    from router_pipelines import tracking
    from router_pipelines.models.bundle import load_bundle, save_bundle
    from router_pipelines.pipelines.precision_router.checks import headline_keys
    from router_pipelines.pipelines.precision_router.config import parse_precision_router_params
    from router_pipelines.pipelines.precision_router.evaluation_nodes import (
        headline_metrics,
        rescore_precision_router,
    )

    logged: list[str] = []
    monkeypatch.setattr(tracking, "log_metrics", lambda metrics, step=None: logged.extend(metrics))
    params = _params(tmp_path)
    params["quantized"]["source"] = "ptq"
    params["evaluation"].update(budget_routers=True, budget_router_steps=2)
    out = _run(params)
    assert "headline/router_b3_perplexity" in logged, "the evaluation node logs its headline"
    assert not [m for m in logged if m.startswith("eval/")], "rows are the table, not metrics"
    registered = headline_metrics(out["router_results"])  # register_router's ``metrics``
    save_bundle(out["model"], tmp_path / "champion")
    champion = load_bundle(tmp_path / "champion")

    base = _base()
    inputs = (_tokens(32, seed=1), _tokens(8, seed=2), base.tokenizer)
    groups = (params["training"], params["evaluation"])
    logged.clear()
    rescored = rescore_precision_router(champion, *inputs, *groups)
    assert logged == [], "the champion's numbers are not logged among this run's"
    assert set(rescored) == set(registered)
    assert rescored == pytest.approx(registered, rel=1e-6)
    evaluation = parse_precision_router_params({"evaluation": params["evaluation"]}).evaluation
    assert {"router_b3_perplexity", "router_b3_mean_bits"} <= set(headline_keys(evaluation))
    assert set(headline_keys(evaluation)) <= set(rescored)

    noise = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for weight in champion.model.routers.parameters():
            weight.add_(torch.randn(weight.shape, generator=noise))
    perturbed = rescore_precision_router(champion, *inputs, *groups)
    assert perturbed["router_flops_share"] == rescored["router_flops_share"]
    assert perturbed["router_b3_perplexity"] != pytest.approx(
        rescored["router_b3_perplexity"], rel=1e-6
    )

    pipeline = create_pipeline()
    promote = next(n for n in pipeline.nodes if n.name == "precision_router.promote_champion")
    assert promote.inputs[3:] == [
        "train_tokens",
        "validation_tokens",
        "tokenizer",
        "params:precision_router.training",
        "params:precision_router.evaluation",
    ]

    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")),
        pad_token="a",
    )
    with pytest.raises(ValueError, match="its tokenizer .* is not the data's"):
        rescore_precision_router(champion, inputs[0], inputs[1], other, *groups)
    with pytest.raises(ValueError, match="holds a 'causal_lm' model .* not a Layerwise"):
        rescore_precision_router(base, *inputs, *groups)


@pytest.mark.parametrize(
    ("losses", "selected"),
    [({"trained": 2.0, "static start": 1.0}, "static start"), ({"trained": 1.0}, "trained")],
)
def test_a_budget_router_is_selected_on_the_calibration_rows(
    tmp_path, monkeypatch, losses, selected
):
    """budget_router_selection: calibration keeps the static start where training did not
    lower the calibration loss, and that start *is* its static allocation (the searched one, of
    lowest calibration loss) on held-out rows; with a lower trained loss (or selection none)
    the trained router is kept."""
    from router_pipelines.pipelines.precision_router import evaluation_nodes

    seen: list[str] = []
    real = evaluation_nodes._calibration_loss

    def calibration_loss(router, setting, rows, config):
        seen.append(setting.selected)
        measured = real(router, setting, rows, config)
        assert np.isfinite(measured)
        return losses.get(setting.selected, 2.0)

    monkeypatch.setattr(evaluation_nodes, "_calibration_loss", calibration_loss)
    params = _params(tmp_path)
    params["quantized"]["source"] = "ptq"
    params["evaluation"].update(budget_routers=True, budget_router_steps=2)
    out = _run(params)
    assert seen == ["trained", "static start"] * 2  # both candidates, at each budget
    table = out["evaluation"].set_index("name")
    results = {e["budget"]: e for e in out["router_results"]["per_budget"]}
    for budget in (3, 5):
        row = table.loc[f"budget_router_b{budget}"]
        static = table.loc[f"static_searched_b{budget}"]
        assert row["selected"] == selected
        assert results[budget]["budget_router_selected"] == selected
        if selected == "static start":
            assert row["perplexity"] == static["perplexity"]
            assert row["mean_bits"] == pytest.approx(static["mean_bits"])
            assert row["layer_bits"] == static["layer_bits"]


def test_without_selection_the_trained_budget_router_is_kept(tmp_path):
    params = _params(tmp_path)
    params["quantized"]["source"] = "ptq"
    params["evaluation"].update(
        budget_routers=True, budget_router_steps=2, budget_router_selection="none"
    )
    table = _run(params)["evaluation"].set_index("name")
    assert set(table.loc[["budget_router_b3", "budget_router_b5"], "selected"]) == {"trained"}
