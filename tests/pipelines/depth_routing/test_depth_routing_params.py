"""Bad input of the depth-routing pipelines (issue 9, §4): each error names the value, and is
raised by the parameter check before any node runs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from transformers import GPT2Config, GPT2LMHeadModel, Qwen2Config, Qwen2ForCausalLM

from router_pipelines.pipeline_registry import register_pipelines
from router_pipelines.validation import ParameterValidationError, validate_run

CONF = Path(__file__).resolve().parents[3] / "conf"


@pytest.fixture(scope="module")
def pipelines():
    return register_pipelines()


def _raw(**changes) -> dict:
    raw = {}
    for name in ("data_processing", "depth_routing", "promotion"):
        raw.update(yaml.safe_load((CONF / f"base/parameters_{name}.yml").read_text()))
    raw = copy.deepcopy(raw)
    raw["depth_routing"]["training"]["output_dir"] = "data/06_models/checkpoints/depth_routing"
    for dotted, value in changes.items():
        *path, key = dotted.split(".")
        node = raw
        for part in path:
            node = node[part]
        node[key] = value
    return raw


def _problems(pipelines, name: str, **changes) -> str:
    with pytest.raises(ParameterValidationError) as err:
        validate_run(_raw(**changes), pipelines[name], catalog={})
    return str(err.value)


@pytest.mark.parametrize("name", ["mod", "dtf", "depth_routing"])
def test_the_default_parameters_pass(pipelines, name):
    parsed = validate_run(_raw(), pipelines[name], catalog={})
    assert parsed["depth_routing"].model.capacity_gamma is None  # resolved per type
    assert parsed["depth_routing"].source.source == "auto"  # an unchanged re-run reuses


def test_the_promotion_rule_reads_headline_metrics():
    """The rule's keys are among ``HEADLINE_METRICS`` (that the registration reports exactly
    those is asserted on a real run, test_depth_routing_e2e.py)."""
    from router_pipelines.pipelines.depth_routing.config import HEADLINE_METRICS

    rules = yaml.safe_load((CONF / "base/parameters_promotion.yml").read_text())["promotion"]
    rule = rules["rules"]["depth_routing"]
    assert rule["greater_is_better"] is False
    assert {rule["metric"], rule["cost_metric"]} <= set(HEADLINE_METRICS)


@pytest.mark.parametrize(
    ("pipeline", "changes", "message"),
    [
        (
            "mod",
            {"depth_routing.model.capacity_gamma": 0},
            "depth_routing.model.capacity_gamma: 0.0 is outside (0, 1]",
        ),
        (
            "dtf",
            {"depth_routing.model.capacity_gamma": 1.5},
            "depth_routing.model.capacity_gamma: 1.5 is outside (0, 1]",
        ),
        (
            "mod",
            {"depth_routing.model.routed_layers": [1, 8]},
            "depth_routing.model.routed_layers: [8] out of range; the model has 8 blocks",
        ),
        (
            "dtf",
            {"depth_routing.model.overrides": {"num_hidden_layers": 7}},
            "depth_routing.num_hidden_layers: 7 blocks cannot pair",
        ),
        (
            "depth_routing",
            {"depth_routing.model_type": "moe"},
            "depth_routing.model_type: 'moe' is not allowed",
        ),
        (
            "mod",
            {"depth_routing.model.architecture": "gpt2"},
            "depth_routing.model.architecture: 'gpt2' has no block token routing supports",
        ),
        (
            "mod",
            {"depth_routing.mode": "transfer"},
            "depth_routing.mode: 'transfer' needs model.name_or_path",
        ),
        (
            "dtf",
            {"depth_routing.source.source": "pretrained"},
            "depth_routing.source.source: 'pretrained' is not a source of routed models",
        ),
        (
            "mod",
            {"promotion.rules.depth_routing.metric": "validation_perplexity"},
            "promotion.rules.depth_routing.metric: 'validation_perplexity' is not a metric the "
            "depth-routing registration reports; allowed: ['validation_loss'",
        ),
        (
            "dtf",
            {"promotion.rules.depth_routing.cost_metric": "bits"},
            "promotion.rules.depth_routing.cost_metric: 'bits' is not a metric",
        ),
    ],
)
def test_bad_values_are_named_before_training(pipelines, pipeline, changes, message):
    assert message in _problems(pipelines, pipeline, **changes)


def test_mod_layers_are_not_checked_for_the_dtf_pipeline(pipelines):
    """``--pipeline=dtf`` fixes the type: an odd count is its error, a MoD index is not."""
    odd = {"depth_routing.model.overrides": {"num_hidden_layers": 7}}
    validate_run(_raw(**odd), pipelines["mod"], catalog={})
    assert "cannot pair" in _problems(pipelines, "dtf", **odd)
    assert "cannot pair" in _problems(
        pipelines, "depth_routing", **odd, **{"depth_routing.model_type": "dtf"}
    )


def test_transfer_names_an_unsupported_architecture_and_accepts_qwen2(pipelines, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(
        tmp_path / "gpt2"
    )
    qwen = Qwen2Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    Qwen2ForCausalLM(qwen).save_pretrained(tmp_path / "qwen2")
    transfer = {"depth_routing.mode": "transfer", "data.tokenizer.name_or_path": "x"}
    message = _problems(
        pipelines, "mod", **transfer, **{"depth_routing.model.name_or_path": str(tmp_path / "gpt2")}
    )
    assert "is a 'gpt2' model; token routing supports ['qwen2', 'llama', 'mistral']" in message
    parsed = validate_run(
        _raw(**transfer, **{"depth_routing.model.name_or_path": str(tmp_path / "qwen2")}),
        pipelines["dtf"],
        catalog={},
    )
    assert parsed["depth_routing"].mode == "transfer"
    message = _problems(
        pipelines,
        "mod",
        **transfer,
        **{"depth_routing.model.name_or_path": str(tmp_path / "qwen2"), "data.seq_len": 1024},
    )
    assert "data.seq_len: 1024 exceeds the 512 positions" in message
    message = _problems(
        pipelines,
        "mod",
        **{
            "depth_routing.mode": "transfer",
            "depth_routing.model.name_or_path": str(tmp_path / "qwen2"),
        },
    )
    assert "data.tokenizer.name_or_path is null" in message
    missing = _problems(
        pipelines, "mod", **transfer, **{"depth_routing.model.name_or_path": str(tmp_path / "none")}
    )
    assert "is not a local folder nor in the local Hugging Face cache" in missing


def test_a_dtf_model_saved_by_older_layers_is_not_reused(monkeypatch, char_tokenizer):
    """DTF's reuse identity carries the layers' revision (a model saved before the softplus
    temperatures and SwiGLU prior no longer loads); MoD's and the dense model's do not."""
    from types import SimpleNamespace

    from router_pipelines.models import dtf
    from router_pipelines.pipelines.depth_routing import nodes
    from router_pipelines.pipelines.depth_routing.config import parse_depth_routing_params

    params = parse_depth_routing_params(_raw()["depth_routing"])
    tokens = SimpleNamespace(fingerprint="tokens")
    now = {
        what: nodes._identity(params, tokens, char_tokenizer, what)
        for what in ("mod", "dtf", "dense")
    }
    assert now["dtf"].inputs["dtf_revision"] == dtf.DTF_REVISION
    assert "dtf_revision" not in now["mod"].inputs and "dtf_revision" not in now["dense"].inputs
    monkeypatch.setattr(dtf, "DTF_REVISION", dtf.DTF_REVISION + 1)
    later = {
        what: nodes._identity(params, tokens, char_tokenizer, what)
        for what in ("mod", "dtf", "dense")
    }
    assert later["dtf"].fingerprint != now["dtf"].fingerprint
    assert later["mod"].fingerprint == now["mod"].fingerprint
    assert later["dense"].fingerprint == now["dense"].fingerprint
