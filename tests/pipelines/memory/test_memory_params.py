"""Bad memory parameters and bad chat records stop the run before any node, naming the value
(the ``ValidateParameters`` hook's ``validate_run`` on the real ``memory`` pipeline)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from kedro.io import DataCatalog

from router_pipelines.pipeline_registry import register_pipelines
from router_pipelines.pipelines.memory.config import parse_memory_params
from router_pipelines.validation import ParameterValidationError, validate_run

CONF = Path(__file__).resolve().parents[3] / "conf/base"


def _group(name: str, file: str) -> dict:
    return yaml.safe_load((CONF / f"parameters_{file}.yml").read_text())[name]


RAW = {
    "data": _group("data", "data_processing"),
    "pretrain": _group("pretrain", "pretrain"),
    "memory": _group("memory", "memory"),
    "promotion": _group("promotion", "promotion"),
}


def _validate(**changes):
    raw = copy.deepcopy(RAW)
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        target = raw["memory"]
        for part in path:
            target = target[part]
        target[key] = value
    return validate_run(raw, register_pipelines()["memory"], DataCatalog())


def test_the_committed_parameters_pass_and_map_the_three_learning_rates():
    parsed = _validate()["memory"]
    assert parsed.adapter.num_chapters == 8 and parsed.register.name == "memory_lm"
    engine = parsed.training.engine_config(lora=True)
    assert engine.learning_rate == parsed.training.base_model_lr
    assert engine.param_groups[:2] == [
        {"pattern": r"^memory\.", "lr": parsed.training.memory_lr},
        {"pattern": "lora_", "lr": parsed.training.lora_lr},
    ]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"adapter__top_k": 9}, r"memory\.adapter\.top_k: 9 exceeds the 8 chapters"),
        (
            {"adapter__num_memory_tokens": 250},
            r"memory\.adapter\.num_memory_tokens: 250 is not divisible by chapter_size 32",
        ),
        (
            {"adapter__memory_layers": [1, 4]},
            r"memory\.adapter\.memory_layers: layer 4 is outside the model's 4 decoder blocks",
        ),
        ({"adapter__num_heads": 3}, r"memory\.adapter\.num_heads: 3 does not divide .* 128"),
        ({"training__distributed_strategy": "zero"}, r"distributed_strategy: 'zero'"),
        ({"training__save_precision": "int8"}, r"save_precision: 'int8'"),
        ({"training__memory_lr": -1.0}, r"memory\.training\.memory_lr: .*-1\.0"),
        ({"chat_data__seq_len": 4096}, r"memory\.chat_data\.seq_len: 4096 exceeds the 1024"),
        ({"adapters": {}}, r"memory.*adapters"),
    ],
)
def test_bad_parameters_are_named_before_anything_runs(changes, message):
    with pytest.raises(ParameterValidationError, match=message):
        _validate(**changes)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            {"metric": "chat_loss"},
            r"promotion\.rules\.memory\.metric: 'chat_loss' is not a metric register_memory "
            r"reports; allowed: \['chat_validation_loss', .*'trainable_parameters'\]",
        ),
        (
            {"metric": "chat_validation_loss", "cost_metric": "flops"},
            r"promotion\.rules\.memory\.cost_metric: 'flops' is not a metric",
        ),
        (None, r"promotion\.rules\.memory: no rule for the memory family"),
    ],
)
def test_a_promotion_rule_on_metrics_the_family_does_not_report_is_refused(rule, message):
    raw = copy.deepcopy(RAW)
    if rule is None:
        del raw["promotion"]["rules"]["memory"]
    else:
        raw["promotion"]["rules"]["memory"] = rule
    with pytest.raises(ParameterValidationError, match=message):
        validate_run(raw, register_pipelines()["memory"], DataCatalog())


def test_the_committed_promotion_rule_reads_the_chat_loss_and_trainable_parameters():
    rule = _validate()["promotion"].rules["memory"]
    assert (rule.metric, rule.greater_is_better, rule.cost_metric) == (
        "chat_validation_loss",
        False,
        "trainable_parameters",
    )


def _chat_file(tmp_path: Path, records: list[dict]) -> str:
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


GOOD = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}


@pytest.mark.parametrize(
    ("bad", "text_field", "message"),
    [
        (
            {"messages": [{"role": "user", "content": "q"}, {"role": "robot", "content": "a"}]},
            "messages",
            r"chats\.jsonl:2: messages\[2\] has unknown role 'robot'",
        ),
        (
            {"messages": [{"role": "user", "content": "only a question"}]},
            "messages",
            r"chats\.jsonl:2: chat has no assistant message",
        ),
        (GOOD, ["instruction", "input", "output"], r"chats\.jsonl:1: missing field 'instruction'"),
        (GOOD, "dialogue", r"text_field: 'dialogue' is not a field of .*chats\.jsonl"),
    ],
)
def test_bad_chat_records_are_named_with_file_and_line(tmp_path, bad, text_field, message):
    path = _chat_file(tmp_path, [GOOD, bad])
    with pytest.raises(ParameterValidationError, match=message) as error:
        _validate(chat_data__raw_path=path, chat_data__text_field=text_field)
    if text_field != "dialogue":  # a bad record, not a bad field name: the fix is offered
        assert "memory.chat_data.on_invalid: skip" in str(error.value)


def test_hub_style_chat_shapes_parse_from_local_files(tmp_path):
    """UltraChat's ``messages`` and CodeAlpaca's instruction/input/output, offline."""
    alpaca = {"instruction": "Add two numbers", "input": "", "output": "def add(a, b): ..."}
    path = _chat_file(tmp_path, [alpaca, alpaca])
    parsed = _validate(
        chat_data__raw_path=path, chat_data__text_field=["instruction", "input", "output"]
    )["memory"]
    assert list(parsed.chat_data.text_fields) == ["instruction", "input", "output"]
    ultrachat = parse_memory_params(
        {"chat_data": {"hub_dataset": "HuggingFaceH4/ultrachat_200k", "hub_split": "train_sft"}}
    )
    assert (
        ultrachat.chat_data.hub_split == "train_sft" and ultrachat.chat_data.mode == "instruction"
    )


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_the_shipped_accelerate_configs_are_the_strategy_mapping(strategy):
    from router_pipelines.pipelines.memory.config import MemoryTrainingConfig, accelerate_config

    shipped = yaml.safe_load((CONF.parent / f"accelerate/{strategy}.yaml").read_text())
    training = MemoryTrainingConfig(
        distributed_strategy=strategy, save_only_trainable=strategy == "ddp"
    )
    assert shipped == accelerate_config(training)
    sharded = accelerate_config(
        MemoryTrainingConfig(distributed_strategy="fsdp", fsdp_sharding_strategy="SHARD_GRAD_OP")
    )
    assert sharded["fsdp_config"]["fsdp_sharding_strategy"] == "SHARD_GRAD_OP"
    assert ("fsdp_config" in shipped) == (strategy == "fsdp")
