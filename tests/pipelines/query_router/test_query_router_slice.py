"""The query-router part of the DAG on an in-memory catalog: outcomes → router → evaluation."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset, Version
from kedro.runner import SequentialRunner
from tiny_models import char_tokenizer, tiny_llama
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from router_pipelines.data.token_store import TokenBlocks
from router_pipelines.datasets import (
    ModelVersionsDataset,
    OptionalModelDataset,
    PretrainedModelDataset,
)
from router_pipelines.models.bundle import ModelBundle, load_bundle, save_bundle
from router_pipelines.models.query_router import label_token_ids
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM
from router_pipelines.pipelines.query_router import create_pipeline
from router_pipelines.pipelines.query_router.config import parse_query_router_params

CONF = Path(__file__).resolve().parents[3] / "conf"
SEQ_LEN, VOCAB = 24, 48


def _params(tmp_path: Path, **groups) -> dict:
    params = yaml.safe_load((CONF / "base/parameters_query_router.yml").read_text())
    params = copy.deepcopy(params["query_router"])
    params["queries"].update(prompt_tokens=12, reference_tokens=8, window_stride=None)
    params["prompt"]["system_instruction"] = "rate it"
    params["training"].update(
        output_dir=str(tmp_path / "ckpt"), num_train_epochs=2, batch_size=8, progress_bar=False
    )
    params["outcomes"].update(warmup=0, ladder=["lowest", "highest"])  # widths of one model
    params["ladder_lm"]["model"].update(
        max_positions=96, overrides={"n_layer": 1, "n_embd": 16, "n_inner": 32}
    )
    params["ladder_lm"]["training"].update(
        output_dir=str(tmp_path / "ladder_ckpt"),
        max_steps=20,
        warmup_steps=2,
        eval_steps=10,
        eval_max_batches=2,
        save_steps=20,
        logging_steps=5,
        progress_bar=False,
    )
    params["register"]["enabled"] = False
    for group, values in groups.items():
        params[group].update(values)
    return params


def _tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0"
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return tokenizer


@pytest.fixture(scope="module")
def models_and_data():
    torch.manual_seed(0)
    tokenizer = _tokenizer()
    config = GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_inner=64, vocab_size=VOCAB, n_positions=96
    )
    model = GPT2LMHeadModel(config)
    rng = np.random.default_rng(2)
    # Rows count up by a row-specific step (1 or 3): learnable, so 8 bits beat 2 bits.
    steps = rng.choice([1, 3], size=200)
    rows = (rng.integers(0, VOCAB, size=200)[:, None] + steps[:, None] * np.arange(SEQ_LEN)) % VOCAB
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    data = torch.tensor(rows[40:], dtype=torch.long)
    for step in range(60):
        batch = data[(step * 16) % 160 : (step * 16) % 160 + 16]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    base = ModelBundle(model, tokenizer, {"family": "causal_lm"})
    switchable = SwitchableLM.from_base(
        copy.deepcopy(model), SwitchableConfig(bit_widths=[2, 4, 8], act_bits=None)
    )
    tokens = TokenBlocks.from_arrays(rows[:40], fingerprint="counting")
    return base, ModelBundle(switchable, tokenizer, {"family": "switchable"}), tokens


class KeptDataset(MemoryDataset):
    def _release(self) -> None:
        pass


OUTPUTS = (
    "queries",
    "outcomes",
    "model",
    "training_summary",
    "evaluation",
    "routing_metrics",
    "ladder_lm",
    "ladder_lm_summary",
)


class NoRegistry:
    """A model registry with nothing registered (the reuse look-up finds no version)."""

    def versions(self, name: str) -> list:
        return []


def _run(params: dict, models_and_data, models_dir: Path | None = None) -> dict:
    """The slice up to the evaluation; with ``models_dir`` the router and the ladder LM are
    saved there as the catalog does (versioned) and earlier versions are offered for reuse."""
    base, switchable, tokens = models_and_data
    catalog = DataCatalog({f"query_router.{name}": KeptDataset() for name in OUTPUTS})
    ladder_dir = (models_dir or Path(params["training"]["output_dir"]) / "none") / "ladder_lm"
    if models_dir is not None:
        catalog["query_router.ladder_lm"] = OptionalModelDataset(
            path=str(ladder_dir), version=Version(None, None)
        )
    catalog["query_router.saved_ladder_lms"] = ModelVersionsDataset(path=str(ladder_dir))
    catalog["train_tokens"] = tokens
    catalog["tokenizer"] = base.tokenizer
    if models_dir is None:
        # an empty store: nothing to reuse; the router stays in memory
        models_dir = Path(params["training"]["output_dir"]) / "no_models"
    else:
        catalog["query_router.model"] = PretrainedModelDataset(
            path=str(models_dir), version=Version(None, None)
        )
    catalog["query_router.saved_models"] = ModelVersionsDataset(path=str(models_dir))
    catalog["model_registry"] = NoRegistry()
    catalog["pretrain.model"] = base
    catalog["switchable.model"] = switchable
    catalog["validation_tokens"] = tokens
    for group, values in params.items():
        catalog[f"params:query_router.{group}"] = values
    parse_query_router_params(params)  # what the validation hook does first
    pipeline = create_pipeline().to_nodes("query_router.evaluate_router")
    SequentialRunner().run(pipeline, catalog)
    return {name: catalog[f"query_router.{name}"].load() for name in OUTPUTS}


def test_slice_measures_labels_trains_the_router_and_evaluates(tmp_path, models_and_data):
    out = _run(_params(tmp_path), models_and_data)
    outcomes = out["outcomes"]
    assert len(outcomes) == 40 and set(outcomes["split"]) == {"train", "calibration", "test"}
    assert outcomes["label"].between(1, 5).all()
    train = outcomes[outcomes["split"] == "train"]
    # Quantile labels: about a fifth of the training queries per score.
    counts = train["label"].value_counts().reindex(range(1, 6), fill_value=0)
    assert counts.min() >= 3, counts.to_dict()
    assert (outcomes["cheap_bytes"] < outcomes["strong_bytes"]).all()
    assert (outcomes["cheap_seconds"] > 0).all()
    np.testing.assert_allclose(
        outcomes["gap_2bit"], outcomes["quality_8bit"] - outcomes["quality_2bit"]
    )

    router = out["model"]
    assert router.family == "query_router"
    assert label_token_ids(router.tokenizer) == router.metadata["label_token_ids"]
    summary = out["training_summary"]
    steps_per_epoch = -(-len(train) // 8)
    assert summary["global_step"] == 2 * steps_per_epoch
    assert summary["examples"] == len(train)

    table = out["evaluation"]
    assert set(table["router"]) == {"router", "random", "oracle", "uncertainty", "prompt_gap"}
    # the prompt-gap reference sends first the test queries whose prompt the strong model
    # predicts best relative to the cheap one
    on_test = outcomes[outcomes["split"] == "test"]
    prompt_gap = (on_test["prompt_loss_2bit"] - on_test["prompt_loss_8bit"]).to_numpy()
    thresholds = table.loc[table["router"] == "prompt_gap", "threshold"].to_numpy()[1:]
    np.testing.assert_allclose(thresholds, np.unique(prompt_gap)[::-1])
    metrics = out["routing_metrics"]["metrics"]
    assert metrics["always_strong_quality"] > metrics["always_cheap_quality"]
    for name in ("router", "random", "uncertainty", "prompt_gap"):
        assert metrics["oracle_apgr"] >= metrics[f"{name}_apgr"]
        assert metrics["oracle_cpt_50"] <= metrics[f"{name}_cpt_50"]
    test = outcomes[outcomes["split"] == "test"]
    assert metrics["test_queries"] == len(test)
    assert metrics["always_cheap_quality"] == pytest.approx(test["quality_2bit"].mean())
    document = out["routing_metrics"]
    assert len(document["calibration_p_strong"]) == (outcomes["split"] == "calibration").sum()
    assert set(document["thresholds"]) == {"20", "50", "80"}
    json.dumps(document)
    save_bundle(router, tmp_path / "router")
    loaded = load_bundle(tmp_path / "router")
    assert loaded.family == "query_router"
    assert label_token_ids(loaded.tokenizer) == router.metadata["label_token_ids"]


def test_slice_routes_over_a_ladder(tmp_path, models_and_data):
    params = _params(
        tmp_path,
        outcomes={"ladder": [2, 4, 8]},
        prompt={"user_template": "[Question]\n{question}\n\n[Model]\n{model}\n\nPrediction:\n"},
    )
    params["training"]["num_train_epochs"] = 1
    out = _run(params, models_and_data)
    train = out["outcomes"][out["outcomes"]["split"] == "train"]
    assert out["training_summary"]["examples"] == 2 * len(train)  # one example per lower rung
    assert out["ladder_lm"]["enabled"] is False  # not on the ladder: nothing trained
    table = out["evaluation"]
    assert {"ladder_router", "ladder_router_lambda", "ladder_oracle"} <= set(table["router"])
    metrics = out["routing_metrics"]["metrics"]
    assert metrics["ladder_oracle_hull_area"] >= metrics["ladder_router_hull_area"]
    assert metrics["ladder_oracle_hull_area"] >= metrics["ladder_router_lambda_hull_area"]
    rule = out["routing_metrics"]["ladder_rule"]
    assert rule["rung_costs"] == sorted(rule["rung_costs"]) and len(rule["gap_means"]) == 5
    # score 5 (good enough) means a smaller gap to the strongest rung than score 1
    assert rule["gap_means"][4] < rule["gap_means"][0]
    assert metrics["ladder_2bit_cost"] < metrics["ladder_4bit_cost"] < metrics["ladder_8bit_cost"]


LADDER_TEMPLATE = "[Question]\n{question}\n\n[Model]\n{model}\n\nPrediction:\n"


def test_slice_routes_between_models_of_two_sizes(tmp_path, models_and_data):
    """``ladder_lm``: a smaller causal LM trained by the pretrain code on the same tokens is the
    cheapest rung, below two widths of the switchable model; a rerun reuses it."""
    params = _params(
        tmp_path,
        outcomes={"ladder": ["ladder_lm", 4, 8]},
        prompt={"user_template": LADDER_TEMPLATE},
    )
    params["training"]["num_train_epochs"] = 1
    models = tmp_path / "models"
    out = _run(params, models_and_data, models)
    ladder_lm = out["ladder_lm"]
    assert ladder_lm.model.config.n_layer == 1 and ladder_lm.model.config.n_embd == 16
    first = out["ladder_lm_summary"]
    assert first["origin"] == "train" and first["global_step"] == 20
    outcomes = out["outcomes"]
    n_params = sum(p.numel() for p in ladder_lm.model.parameters())
    np.testing.assert_array_equal(outcomes["bytes_ladder_lm"], 2 * n_params * 8)  # fp16 x 8 tokens
    assert (outcomes["bytes_ladder_lm"] < outcomes["bytes_4bit"]).all()
    # the 1 x 16 model, 20 steps, is the weaker one: the labels measure a real gap
    assert outcomes["quality_ladder_lm"].mean() < outcomes["quality_8bit"].mean() - 0.1
    assert outcomes["label"].equals(outcomes["label_ladder_lm"])
    metrics = out["routing_metrics"]["metrics"]
    assert metrics["ladder_ladder_lm_cost"] < metrics["ladder_4bit_cost"]
    assert out["routing_metrics"]["ladder"] == ["ladder_lm", "4bit", "8bit"]
    again = _run(copy.deepcopy(params), models_and_data, models)
    assert again["ladder_lm_summary"]["origin"] == "catalog"
    assert again["ladder_lm_summary"]["fingerprint"] == first["fingerprint"]
    np.testing.assert_array_equal(
        again["outcomes"]["quality_ladder_lm"], outcomes["quality_ladder_lm"]
    )


def test_the_ladder_lm_can_be_any_saved_causal_lm_on_the_same_tokenizer(tmp_path, models_and_data):
    """``ladder_lm.source: pretrained`` with ``model.name_or_path``: a causal LM folder as it
    is (here a smaller GPT-2 saved locally), no training."""
    torch.manual_seed(3)
    folder = tmp_path / "small_gpt2"
    GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=8, n_head=2, n_inner=16, vocab_size=VOCAB, n_positions=96)
    ).save_pretrained(folder)
    params = _params(tmp_path, outcomes={"ladder": ["ladder_lm", "highest"]})
    params["ladder_lm"]["source"] = {"source": "pretrained"}
    params["ladder_lm"]["model"]["name_or_path"] = str(folder)
    params["training"]["num_train_epochs"] = 1
    out = _run(params, models_and_data)
    assert out["ladder_lm_summary"] == {"origin": "pretrained", "name_or_path": str(folder)}
    assert out["ladder_lm"].model.config.n_embd == 8
    assert not (tmp_path / "ladder_ckpt").exists()  # nothing trained
    outcomes = out["outcomes"]
    assert (outcomes["bytes_ladder_lm"] < outcomes["bytes_8bit"]).all()
    # an untrained model: far below the strong one
    assert outcomes["quality_ladder_lm"].mean() < outcomes["quality_8bit"].mean()


def test_a_ladder_lm_larger_than_the_next_rung_is_refused_before_training(
    tmp_path, models_and_data
):
    params = _params(tmp_path, outcomes={"ladder": ["ladder_lm", "highest"]})
    params["ladder_lm"]["model"]["overrides"] = {"n_layer": 4, "n_embd": 64, "n_inner": 128}
    with pytest.raises(
        ValueError,
        match=r"'ladder_lm' reads [\d,]+ weight bytes per token and the next rung '8bit'",
    ):
        _run(params, models_and_data)
    assert not (tmp_path / "ladder_ckpt").exists()


def test_slice_trains_on_the_seed_jsonl(tmp_path, models_and_data):
    path = tmp_path / "router.jsonl"
    lines = []
    for n in range(30):
        record = {
            "messages": [
                {"role": "system", "content": "rate it"},
                {"role": "user", "content": f"[Question]\nt{n} t{n + 1}\n\nPrediction:\n"},
                {"role": "assistant", "content": f"[[{n % 5 + 1}]]"},
            ],
            "prompt": f"t{n} t{n + 1}",
        }
        lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    params = _params(tmp_path, data={"jsonl_path": str(path), "n_sample": 20})
    params["training"]["num_train_epochs"] = 1
    out = _run(params, models_and_data)
    summary = out["training_summary"]
    assert (summary["examples"], summary["eval_examples"]) == (18, 2)
    assert summary["label_source"] == {"jsonl": str(path), "records": 20}


def test_router_from_a_locally_saved_llama(tmp_path, models_and_data):
    torch.manual_seed(0)
    folder = tmp_path / "llama"
    tiny_llama().save_pretrained(folder)
    char_tokenizer().save_pretrained(folder)
    params = _params(tmp_path, router={"name_or_path": str(folder)})
    params["training"]["num_train_epochs"] = 1
    out = _run(params, models_and_data)
    router = out["model"]
    assert type(router.model).__name__ == "LlamaForCausalLM"
    assert router.model.get_input_embeddings().weight.shape[0] == 128  # spare rows reused
    assert out["routing_metrics"]["metrics"]["test_queries"] > 0


def test_an_unchanged_rerun_reuses_the_router_and_a_new_learning_rate_retrains(
    tmp_path, models_and_data
):
    params = _params(tmp_path)
    params["training"]["num_train_epochs"] = 1
    models = tmp_path / "models"
    first = _run(params, models_and_data, models)
    assert first["training_summary"]["origin"] == "train"
    second = _run(copy.deepcopy(params), models_and_data, models)
    summary = second["training_summary"]
    assert (
        summary["origin"] == "catalog"
        and summary["fingerprint"] == (first["training_summary"]["fingerprint"])
    )
    # the reused router scores exactly like the trained one
    assert second["routing_metrics"]["metrics"]["router_apgr"] == pytest.approx(
        first["routing_metrics"]["metrics"]["router_apgr"]
    )
    params["training"]["learning_rate"] = 1.0e-3
    third = _run(params, models_and_data, models)
    assert third["training_summary"]["origin"] == "train"
    assert third["training_summary"]["fingerprint"] != first["training_summary"]["fingerprint"]
    # the reuse look-up is keyed on the labels too: other outcomes (labels) retrain
    params["outcomes"]["label_quantiles"] = [0.1, 0.3, 0.5, 0.7]
    fourth = _run(params, models_and_data, models)
    assert fourth["training_summary"]["origin"] == "train"


def test_the_champion_rescoring_matches_the_evaluation_of_the_same_model(
    tmp_path, models_and_data, monkeypatch
):
    """promotion re-scores a router champion with ``rescore_router``: the router the slice just
    evaluated, saved and loaded back as the registry does, gets the registration's headline
    numbers on the same test queries, with nothing logged; a router trained for another ladder,
    or a model that is no router, is refused."""
    import dataclasses

    import router_pipelines.tracking as tracking
    from router_pipelines.pipelines.query_router.evaluation_nodes import (
        headline_metrics,
        rescore_router,
    )

    params = _params(tmp_path)
    params["training"]["num_train_epochs"] = 1
    out = _run(params, models_and_data)
    registered = headline_metrics(out["routing_metrics"]["metrics"])  # register_router's metrics
    save_bundle(out["model"], tmp_path / "champion")
    champion = load_bundle(tmp_path / "champion")

    def no_logging(*args, **kwargs):
        raise AssertionError("the champion's re-scoring logged to MLflow")

    monkeypatch.setattr(tracking, "log_metrics", no_logging)
    monkeypatch.setattr(tracking, "log_table", no_logging)
    rescored = rescore_router(champion, out["outcomes"], params["outcomes"], params["evaluation"])
    assert set(rescored) == {"router_apgr", "router_cpt_50", "oracle_apgr", "oracle_cpt_50"}
    assert rescored == pytest.approx(registered, rel=1e-9)
    # the router's numbers are the champion's own: other weights route otherwise
    torch.manual_seed(1)
    with torch.no_grad():
        for weight in champion.model.parameters():
            weight.add_(0.5 * torch.randn_like(weight))
    perturbed = rescore_router(champion, out["outcomes"], params["outcomes"], params["evaluation"])
    assert perturbed["oracle_apgr"] == rescored["oracle_apgr"]
    assert perturbed["router_apgr"] != pytest.approx(rescored["router_apgr"], rel=1e-6)

    pipeline = create_pipeline()
    promote = next(n for n in pipeline.nodes if n.name == "query_router.promote_champion")
    assert promote.inputs[3:] == [
        "query_router.outcomes",
        "params:query_router.outcomes",
        "params:query_router.evaluation",
    ]

    other_ladder = dataclasses.replace(
        champion, metadata={**champion.metadata, "ladder": ["2bit", "4bit", "8bit"]}
    )
    with pytest.raises(ValueError, match=r"trained to score the ladder .* not this run's"):
        rescore_router(other_ladder, out["outcomes"], params["outcomes"], params["evaluation"])
    base = models_and_data[0]
    with pytest.raises(ValueError, match="family 'causal_lm', not 'query_router'"):
        rescore_router(base, out["outcomes"], params["outcomes"], params["evaluation"])
