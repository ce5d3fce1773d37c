"""DataConfig: defaults, the shipped parameter files, and a named error for each bad field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from router_pipelines.config import config_from_dict
from router_pipelines.data.config import DataConfig, TokenizerConfig

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_defaults_are_valid():
    cfg = config_from_dict(DataConfig, None, "data")
    assert cfg.mode == "pretraining"
    assert cfg.on_invalid == "error"
    assert cfg.text_fields == ["text"]
    assert isinstance(cfg.tokenizer, TokenizerConfig)
    assert cfg.tokenizer.trust_remote_code is False


@pytest.mark.parametrize("env", ["base", "debug"])
def test_shipped_parameter_files_build_a_config(env):
    params = yaml.safe_load((CONF / env / "parameters_data_processing.yml").read_text())
    assert set(params) == {"data"}  # raw_path moved into the data group
    cfg = config_from_dict(DataConfig, params["data"], "data")
    assert cfg.raw_path == "data/01_raw/python_docs.jsonl"
    assert cfg.tokenizer.name_or_path is None
    assert cfg.num_proc is None and cfg.workers == 1
    if env == "debug":
        assert (cfg.max_records, cfg.seq_len, cfg.tokenizer.vocab_size) == (300, 64, 512)
        assert cfg.cache_dir.endswith("token_cache_debug")


def test_text_field_list_is_kept():
    cfg = config_from_dict(DataConfig, {"text_field": ["instruction", "input", "output"]}, "data")
    assert cfg.text_fields == ["instruction", "input", "output"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"bogus": 1}, "data: unknown key 'bogus'"),
        ({"tokenizer": {"vocab": 10}}, "data.tokenizer: unknown key 'vocab'"),
        ({"mode": "chat"}, "data.mode: 'chat' is not allowed"),
        ({"format": "csv"}, "data.format: 'csv' is not allowed"),
        ({"on_invalid": "ignore"}, "data.on_invalid: 'ignore' is not allowed"),
        ({"seq_len": 1}, "data.seq_len: must be an integer >= 2"),
        ({"seq_len": 8.5}, "data.seq_len: expected an integer"),
        ({"validation_fraction": 1.0}, "data.validation_fraction: must be in [0, 1)"),
        ({"validation_fraction": -0.1}, "data.validation_fraction: must be >= 0"),
        ({"max_records": 0}, "data.max_records: must be an integer >= 1"),
        ({"seed": -1}, "data.seed: must be an integer >= 0"),
        ({"num_proc": 0}, "data.num_proc: must be an integer >= 1"),
        ({"num_proc": 1.5}, "data.num_proc: expected an integer or null"),
        ({"raw_path": ""}, "data.raw_path: expected a non-empty string"),
        ({"text_field": []}, "data.text_field: expected a field name"),
        ({"text_field": ["a", "a"]}, "data.text_field: duplicated"),
        ({"mode": "instruction", "text_field": ["a"]}, "data.text_field: in instruction mode"),
        ({"streaming": "yes"}, "data.streaming: expected true or false"),
        ({"hub_dataset": ""}, "data.hub_dataset: expected a non-empty string"),
        (
            {"tokenizer": {"vocab_size": 100}},
            "data.tokenizer.vocab_size: must be an integer >= 263",
        ),
        (
            {"tokenizer": {"min_frequency": 0}},
            "data.tokenizer.min_frequency: must be an integer >= 1",
        ),
        ({"tokenizer": {"trust_remote_code": 1}}, "data.tokenizer.trust_remote_code"),
        ({"format": "text", "mode": "instruction"}, "data.format: 'text' files"),
    ],
)
def test_bad_values_name_the_field(values, message):
    with pytest.raises(ValueError) as err:
        config_from_dict(DataConfig, values, "data")
    assert str(err.value).startswith(message), str(err.value)


def test_cache_dir_that_is_a_file_is_named(tmp_path):
    taken = tmp_path / "cache"
    taken.write_text("not a folder")
    with pytest.raises(ValueError, match=r"^data\.cache_dir: .* exists and is a file"):
        config_from_dict(DataConfig, {"cache_dir": str(taken)}, "data")
    assert config_from_dict(DataConfig, {"cache_dir": str(tmp_path / "new")}, "data")


def test_num_proc_null_means_one_worker():
    assert config_from_dict(DataConfig, {"num_proc": None}, "data").workers == 1
    assert config_from_dict(DataConfig, {"num_proc": 3}, "data").workers == 3
