"""Bad query-router input stops the run before any work, naming the value (issue 11, item 7)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kedro.config import OmegaConfigLoader
from kedro.io import DataCatalog

from router_pipelines.pipeline_registry import register_pipelines
from router_pipelines.pipelines.query_router.config import (
    check_rung_order,
    parse_query_router_params,
    resolve_ladder,
)
from router_pipelines.validation import ParameterValidationError, validate_run

ROOT = Path(__file__).resolve().parents[3]
BASE = yaml.safe_load((ROOT / "conf/base/parameters_query_router.yml").read_text())["query_router"]


def with_change(group: str, key: str, value) -> dict:
    params = copy.deepcopy(BASE)
    params[group][key] = value
    return params


def test_committed_defaults_parse():
    parsed = parse_query_router_params(BASE)
    assert parsed.outcomes.ladder == ["ladder_lm", "highest"]
    assert parsed.ladder_lm.model.preset == "debug" and parsed.ladder_lm.source.source == "auto"
    assert parsed.ladder_lm.training.max_steps == 1000
    assert parsed.prompt.user_template == "[Question]\n{question}\n\nPrediction:\n"
    assert parsed.prompt.system.startswith("[Instruction]\nBased on the question provided below")
    assert parsed.training.num_train_epochs == 3 and parsed.switchable.source == "auto"
    assert resolve_ladder(parsed.outcomes.ladder, [2, 4, 8]) == ["ladder_lm", 8]
    assert resolve_ladder(["lowest", "highest"], [2, 4, 8]) == [2, 8]


@pytest.mark.parametrize(
    ("group", "key", "value", "message"),
    [
        ("evaluation", "target_shares", [0.2, 1.5], r"target_shares: 1.5 is outside \[0, 1\]"),
        ("evaluation", "serving_target_share", -0.1, r"serving_target_share: -0.1 is outside"),
        ("outcomes", "ladder", [8, 8], r"ladder: \[8, 8\] names a model twice"),
        ("outcomes", "ladder", [4], r"ladder: \[4\] needs at least a cheap and a strong"),
        ("outcomes", "ladder", [2, 9], r"ladder: rung 9 is not allowed"),
        ("outcomes", "ladder", ["small", 8], r"ladder: rung 'small' is not allowed.*'ladder_lm'"),
        ("ladder_lm", "model", {"preset": "huge"}, r"query_router.ladder_lm.model.preset"),
        ("ladder_lm", "source", {"source": "hub"}, r"query_router.ladder_lm.source.source"),
        ("ladder_lm", "size", 3, r"query_router.ladder_lm: unknown key 'size'"),
        ("outcomes", "label_quantiles", [0.5, 0.2, 0.6, 0.8], r"label_quantiles: \[0.5, 0.2"),
        ("outcomes", "cost", "tokens", r"cost: 'tokens' is not allowed"),
        ("data", "n_sample", 0, r"query_router.data.n_sample"),
        ("prompt", "user_template", "Q: {q}", r"user_template: 'Q: \{q\}' has no \{question\}"),
        ("queries", "test_fraction", 0.9, r"calibration_fraction \+ test_fraction"),
        ("training", "num_train_epochs", 0, r"query_router.training.num_train_epochs"),
    ],
)
def test_bad_values_are_named(group, key, value, message):
    with pytest.raises(ValueError, match=message):
        parse_query_router_params(with_change(group, key, value))


def test_ladder_of_three_needs_the_model_field():
    params = with_change("outcomes", "ladder", [2, 4, 8])
    with pytest.raises(ValueError, match=r"user_template: a ladder of 3 models .* \{model\}"):
        parse_query_router_params(params)


def test_a_ladder_out_of_byte_order_is_refused_naming_both_rungs():
    check_rung_order(["ladder_lm", "8bit"], [1_000, 2_000])
    with pytest.raises(
        ValueError,
        match=r"'ladder_lm' reads 3,000 weight bytes per token and the next rung '8bit' 2,000",
    ):
        check_rung_order(["ladder_lm", "8bit"], [3_000, 2_000])


def test_ladder_resolving_to_one_model_is_refused():
    with pytest.raises(
        ValueError, match=r"resolves to \[8, 8\].*cheap and strong models are the same"
    ):
        resolve_ladder(["highest", 8], [2, 4, 8])
    with pytest.raises(ValueError, match=r"width 3 is not one of the switchable model's widths"):
        resolve_ladder([3, 8], [2, 4, 8])


def _debug_params(tmp_path: Path, changes: dict) -> dict:
    loader = OmegaConfigLoader(
        str(ROOT / "conf"),
        base_env="base",
        default_run_env="debug",
        merge_strategy={"parameters": "soft"},
        runtime_params=changes,
    )
    return loader["parameters"]


def _validate(monkeypatch, tmp_path, changes):
    monkeypatch.chdir(ROOT)  # data.raw_path is relative to the project
    params = _debug_params(tmp_path, changes)
    validate_run(params, register_pipelines()["query_router"], DataCatalog())


def test_the_debug_configuration_validates(monkeypatch, tmp_path):
    _validate(monkeypatch, tmp_path, {})


def _seed_file(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


GOOD = {
    "messages": [
        {"role": "system", "content": "rate"},
        {"role": "user", "content": "[Question]\nq\n\nPrediction:\n"},
        {"role": "assistant", "content": "[[4]]"},
    ],
    "prompt": "q",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"query_router": {"outcomes": {"ladder": [2, 3]}}},
            r"width 3 is not one of the switchable model's widths \[2, 4, 8\]",
        ),
        (
            {"query_router": {"queries": {"prompt_tokens": 60}}},
            r"prompt_tokens \+ reference_tokens: 76 exceeds data.seq_len 64",
        ),
        (
            {"query_router": {"data": {"jsonl_path": "missing.jsonl"}}},
            r"query_router.data.jsonl_path: 'missing.jsonl' does not exist",
        ),
        ({"query_router": {"evaluation": {"target_shares": [2]}}}, r"target_shares: 2 is outside"),
        (
            {"query_router": {"training": {"output_dir": "pyproject.toml"}}},
            r"query_router.training.output_dir: 'pyproject.toml' is a file",
        ),
        (
            {"query_router": {"ladder_lm": {"training": {"output_dir": "pyproject.toml"}}}},
            r"query_router.ladder_lm.training.output_dir: 'pyproject.toml' is a file",
        ),
        (
            {"query_router": {"ladder_lm": {"model": {"max_positions": 32}}}},
            r"data.seq_len: 64 exceeds the 32 positions of the ladder LM",
        ),
    ],
)
def test_the_validation_hook_refuses_before_any_node(monkeypatch, tmp_path, change, message):
    with pytest.raises(ParameterValidationError, match=message):
        _validate(monkeypatch, tmp_path, change)


@pytest.mark.parametrize(
    ("records", "n_sample", "message"),
    [
        ([GOOD, {"prompt": "q"}], None, r"record has no 'messages' field"),
        (
            [
                GOOD,
                {
                    **GOOD,
                    "messages": GOOD["messages"][:2] + [{"role": "assistant", "content": "[[9]]"}],
                },
            ],
            None,
            r"label 9 is outside 1..5",
        ),
        ([GOOD] * 3, 10, r"n_sample: 10 is larger than the 3 records"),
    ],
)
def test_a_bad_seed_file_is_refused_before_training(
    monkeypatch, tmp_path, records, n_sample, message
):
    path = _seed_file(tmp_path / "seed.jsonl", records)
    change = {"query_router": {"data": {"jsonl_path": path, "n_sample": n_sample}}}
    with pytest.raises(ParameterValidationError, match=message):
        _validate(monkeypatch, tmp_path, change)


@pytest.mark.parametrize(
    ("name", "kind"), [("query_router_zero3", "DEEPSPEED"), ("query_router_fsdp", "FSDP")]
)
def test_the_documented_accelerate_configs_load(name, kind):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(ROOT / f"conf/accelerate/{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
