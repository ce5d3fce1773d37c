"""Model bundles: saved folders loaded by the family in router_pipelines.json via a registry."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_gpt2

from router_pipelines.models import bundle as bundle_module
from router_pipelines.models.bundle import (
    BUNDLE_FILE,
    FAMILY_LOADERS,
    ModelBundle,
    load_bundle,
    loader_for,
    save_bundle,
)
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM

IDS = torch.tensor([[1, 5, 9, 3, 7]])


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits


def test_causal_lm_round_trip(tmp_path, char_tokenizer):
    model = tiny_gpt2()
    save_bundle(ModelBundle(model, char_tokenizer, {"family": "causal_lm", "note": "x"}), tmp_path)
    loaded = load_bundle(tmp_path)
    assert type(loaded.model) is type(model) and loaded.family == "causal_lm"
    assert loaded.metadata == {"family": "causal_lm", "note": "x"}
    assert loaded.source_dir == str(tmp_path.resolve())
    assert loaded.tokenizer.get_vocab() == char_tokenizer.get_vocab()
    torch.testing.assert_close(logits(loaded.model), logits(model), rtol=0, atol=0)


def test_switchable_round_trip_through_the_registry(tmp_path, char_tokenizer):
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig(bit_widths=[4, 8]))
    model.initialize_quantizers(IDS)
    save_bundle(ModelBundle(model, char_tokenizer, {"family": "switchable"}), tmp_path)
    loaded = load_bundle(tmp_path).model
    assert isinstance(loaded, SwitchableLM)
    for bits in (None, 4, 8):
        model.set_precision(bits)
        loaded.set_precision(bits)
        torch.testing.assert_close(logits(loaded), logits(model), rtol=0, atol=0)


@pytest.mark.parametrize("architecture", ["gpt2", "qwen2", "llama"])
def test_the_saved_tokenizer_comes_back_as_saved_whatever_the_architecture(
    tmp_path, char_tokenizer, architecture
):
    """AutoTokenizer picks a class from config.json's model type (a qwen2 folder came back as a
    Qwen2Tokenizer with an added unk token); the bundle reads back the class it saved."""
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from router_pipelines.model_source import tokenizer_digest

    config = (
        CONFIG_MAPPING[architecture](
            vocab_size=len(char_tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
        if architecture != "gpt2"
        else tiny_gpt2().config
    )
    model = AutoModelForCausalLM.from_config(config)
    save_bundle(ModelBundle(model, char_tokenizer, {"family": "causal_lm"}), tmp_path)
    loaded = load_bundle(tmp_path).tokenizer
    assert type(loaded) is type(char_tokenizer), type(loaded).__name__
    assert loaded.unk_token == char_tokenizer.unk_token
    assert tokenizer_digest(loaded) == tokenizer_digest(char_tokenizer)


def test_a_folder_without_metadata_is_a_causal_lm(tmp_path, char_tokenizer):
    model = tiny_gpt2()
    model.save_pretrained(tmp_path)
    char_tokenizer.save_pretrained(tmp_path)
    loaded = load_bundle(tmp_path)
    assert loaded.family == "causal_lm" and loaded.metadata == {}


def test_unknown_family_lists_the_known_ones(tmp_path, char_tokenizer):
    save_bundle(ModelBundle(tiny_gpt2(), char_tokenizer, {"family": "causal_lm"}), tmp_path)
    (tmp_path / BUNDLE_FILE).write_text(json.dumps({"family": "mixture"}))
    known = sorted(FAMILY_LOADERS)
    with pytest.raises(
        ValueError, match=r"router_pipelines.json: family: unknown model family"
    ) as err:
        load_bundle(tmp_path)
    assert f"known families are {known}" in str(err.value)
    with pytest.raises(ValueError, match="unknown model family 'mixture'"):
        save_bundle(ModelBundle(tiny_gpt2(), char_tokenizer, {"family": "mixture"}), tmp_path / "x")
    assert not (tmp_path / "x").exists()  # refused before anything was written


def test_a_new_family_is_one_registry_entry(tmp_path, char_tokenizer, monkeypatch):
    calls = []

    def load_toy(directory, trust_remote_code):
        calls.append((directory, trust_remote_code))
        return bundle_module.load_causal_lm(directory, trust_remote_code)

    monkeypatch.setattr(bundle_module, "load_toy", load_toy, raising=False)
    monkeypatch.setitem(FAMILY_LOADERS, "toy", "router_pipelines.models.bundle:load_toy")
    save_bundle(ModelBundle(tiny_gpt2(), char_tokenizer, {"family": "toy"}), tmp_path)
    loaded = load_bundle(tmp_path)
    assert loaded.family == "toy" and calls == [(tmp_path, False)]
    assert loader_for("toy") is load_toy


def test_a_bogus_config_json_names_the_file_and_the_key(tmp_path, char_tokenizer):
    save_bundle(ModelBundle(tiny_gpt2(), char_tokenizer, {"family": "causal_lm"}), tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config["n_embd"] = "abc"
    config_file.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.json: .*field 'n_embd'.*expected int") as err:
        load_bundle(tmp_path)
    assert str(config_file) in str(err.value)
    config_file.write_text("{not json")
    with pytest.raises(ValueError, match=r"config\.json: not valid JSON"):
        load_bundle(tmp_path)


def test_a_bogus_switchable_folder_names_the_file(tmp_path, char_tokenizer):
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig())
    save_bundle(ModelBundle(model, char_tokenizer, {"family": "switchable"}), tmp_path)
    config_file = tmp_path / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "n_layer": "two"}))
    with pytest.raises(ValueError, match=r"config\.json: .*field 'n_layer'"):
        load_bundle(tmp_path)
    config_file.write_text(json.dumps(config))
    switchable_file = tmp_path / "switchable_config.json"
    switchable_file.write_text(json.dumps({"bit_widths": [2, 4, 8], "act_bitz": 8}))
    with pytest.raises(ValueError, match=r"switchable_config\.json: unknown key 'act_bitz'"):
        load_bundle(tmp_path)
    (tmp_path / BUNDLE_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match=r"router_pipelines\.json: not valid JSON"):
        load_bundle(tmp_path)


def test_switchable_weights_that_do_not_fit_name_the_file(tmp_path):
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig(bit_widths=[4, 8]))
    model.save_pretrained(tmp_path)
    switchable_file = tmp_path / "switchable_config.json"
    saved = json.loads(switchable_file.read_text())
    switchable_file.write_text(json.dumps({**saved, "bit_widths": [2, 4, 8]}))  # 2-bit steps absent
    with pytest.raises(ValueError, match=r"model\.safetensors: weights do not match the model"):
        SwitchableLM.from_pretrained(tmp_path)
