"""Bad input for the precision router stops before anything runs, naming value and rule
(issue 8 §6; the num_examples case is in the slice test: the row count is known once the
data is tokenized, and the training node checks it before training)."""

from __future__ import annotations

import re

import pytest
from kedro.io import DataCatalog
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.pipeline_registry import register_pipelines
from router_pipelines.pipelines.precision_router.config import parse_precision_router_params
from router_pipelines.validation import ParameterValidationError, validate_run


@pytest.fixture(scope="module")
def pipelines():
    return register_pipelines()


def _validate(pipelines, name: str, group: dict, **others) -> None:
    validate_run({"precision_router": group, **others}, pipelines[name], DataCatalog())


def test_the_shipped_parameters_parse(pipelines):
    promotion = _promotion()  # the shipped rules: both pipelines end in the promotion node
    _validate(pipelines, "precision_router", {}, promotion=promotion)
    _validate(
        pipelines, "precision_router_ptq", {"quantized": {"source": "ptq"}}, promotion=promotion
    )


def test_a_model_path_that_is_not_multi_precision(pipelines, tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64)).save_pretrained(
        tmp_path / "plain"
    )
    for path, what in (
        (tmp_path / "plain", "has no switchable_config.json"),
        (tmp_path / "missing", "does not exist"),
    ):
        group = {"quantized": {"source": "path", "model_path": str(path)}}
        with pytest.raises(
            ParameterValidationError,
            match=rf"model_path: '{re.escape(str(path))}' is not a multi-precision model \({what}\)",
        ):
            _validate(pipelines, "precision_router_ptq", group)


def test_a_precision_the_model_does_not_have(pipelines):
    with pytest.raises(
        ParameterValidationError,
        match=r"precisions: \[3\] bits is not a width of the multi-precision model; it has \[2, 4, 8\]",
    ):
        _validate(pipelines, "precision_router", {"training": {"precisions": [2, 3, 8]}})
    group = {
        "quantized": {"source": "ptq", "bit_widths": [2, 4]},
        "training": {"precisions": [4, 8]},
    }
    with pytest.raises(ParameterValidationError, match=r"\[8\] bits .* it has \[2, 4\]"):
        _validate(pipelines, "precision_router_ptq", group)


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"weight_ce": -0.5}, r"precision_router.training.weight_ce: .*-0.5"),
        ({"weight_precision": -1}, r"precision_router.training.weight_precision: .*-1"),
        ({"weight_ce": 0, "weight_precision": 0}, r"weight_ce, weight_precision: both are 0"),
    ],
)
def test_bad_loss_weights(training, message):
    with pytest.raises(ValueError, match=message):
        parse_precision_router_params({"training": training})


def test_a_target_outside_the_model_range(pipelines):
    with pytest.raises(
        ParameterValidationError,
        match=r"target_bits: 9.5 is outside the model's range; use a value from 2 to 8 bits",
    ):
        _validate(pipelines, "precision_router", {"training": {"target_bits": 9.5}})
    with pytest.raises(ParameterValidationError, match=r"target_bits: 1.0 is outside"):
        _validate(pipelines, "precision_router", {"training": {"target_bits": 1.0}})


def test_other_seed_options_are_checked():
    with pytest.raises(ValueError, match=r"dataset: 'c4'.*data.hub_dataset=c4"):
        parse_precision_router_params({"training": {"dataset": "c4"}})
    with pytest.raises(ValueError, match=r"num_examples: 4 is smaller than batch_size 8"):
        parse_precision_router_params({"training": {"num_examples": 4}})
    with pytest.raises(ValueError, match=r"granularity: 'layer' is not allowed"):
        parse_precision_router_params({"router": {"granularity": "layer"}})
    with pytest.raises(ValueError, match=r"precision_router: unknown key 'trainning'"):
        parse_precision_router_params({"trainning": {}})


def test_composes_after_the_trained_switchable_family():
    """The same namespace after the trained (and registered) switchable family, as in a
    default run: no free inputs beyond the catalog's, registration after the switchable's."""
    from router_pipelines.pipelines import data_processing, precision_router, pretrain, switchable

    dag = (
        data_processing.create_pipeline()
        + pretrain.create_pipeline()
        + switchable.create_pipeline()
        + precision_router.create_pipeline(switchable_registered=True)
    )
    free = {name for name in dag.inputs() if not name.startswith("params:")}
    assert free == {"model_registry", "pretrain.saved_models", "switchable.saved_models"}
    order = [node.name for node in dag.nodes]
    assert order.index("switchable.register_switchable") < order.index(
        "precision_router.register_router"
    )


def _promotion() -> dict:
    from pathlib import Path

    import yaml

    conf = Path(__file__).resolve().parents[3] / "conf" / "base" / "parameters_promotion.yml"
    return yaml.safe_load(conf.read_text())["promotion"]


def test_the_promotion_rule_names_headline_metrics_of_the_run(pipelines):
    promotion = _promotion()
    rule = promotion["rules"]["precision_router"]
    assert rule["metric"] == "router_b3_perplexity"
    _validate(pipelines, "precision_router", {}, promotion=promotion)  # shipped: fine
    # a budget list without 3 bits: the rule's metric would never be reported
    with pytest.raises(
        ParameterValidationError,
        match=r"promotion.rules.precision_router.metric: 'router_b3_perplexity' is not a "
        r"metric .*budgets \[4.0, 5.0\] reports; allowed: \['router_b4_perplexity'",
    ):
        _validate(
            pipelines, "precision_router", {"evaluation": {"budgets": [4, 5]}}, promotion=promotion
        )
    promotion["rules"]["precision_router"]["cost_metric"] = "mean_bits"
    with pytest.raises(ParameterValidationError, match=r"cost_metric: 'mean_bits' is not"):
        _validate(
            pipelines, "precision_router_ptq", {"quantized": {"source": "ptq"}}, promotion=promotion
        )
