import pytest
import torch

from router_pipelines.models.presets import PRESETS, ModelConfig, build_causal_lm


@pytest.fixture
def tokenizer(char_tokenizer):
    return char_tokenizer


@pytest.mark.parametrize("architecture", ["gpt2", "llama", "qwen2"])
def test_debug_preset_has_the_preset_shape_in_every_architecture(tokenizer, architecture):
    model = build_causal_lm(ModelConfig(preset="debug", architecture=architecture), tokenizer)
    config = model.config
    assert config.num_hidden_layers == PRESETS["debug"]["n_layer"]
    assert config.hidden_size == PRESETS["debug"]["hidden"]
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    assert config.pad_token_id == tokenizer.pad_token_id
    logits = model(torch.tensor([[2, 3, 4]])).logits
    assert logits.shape == (1, 3, len(tokenizer))


def test_small_preset_is_the_30m_shape(tokenizer):
    shape = PRESETS["small"]
    assert (shape["n_layer"], shape["hidden"], shape["intermediate"]) == (8, 384, 1024)


def test_same_seed_same_weights_other_seed_other_weights(tokenizer):
    config = ModelConfig(preset="debug")
    a = build_causal_lm(config, tokenizer, seed=1).state_dict()
    b = build_causal_lm(config, tokenizer, seed=1).state_dict()
    c = build_causal_lm(config, tokenizer, seed=2).state_dict()
    key = "transformer.h.0.attn.c_attn.weight"
    torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert not torch.equal(a[key], c[key])


def test_overrides_reach_the_config_and_typos_are_named(tokenizer):
    model = build_causal_lm(ModelConfig(preset="debug", overrides={"n_head": 4}), tokenizer)
    assert model.config.n_head == 4
    with pytest.raises(ValueError, match="overrides.n_heads: not a field of GPT2Config"):
        build_causal_lm(ModelConfig(preset="debug", overrides={"n_heads": 4}), tokenizer)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("preset", "huge", "preset: 'huge' is not allowed"),
        ("architecture", "bert", "architecture"),
        ("dropout", 1.5, "dropout: must be in"),
    ],
)
def test_bad_config_values_raise(field, value, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**{field: value})


def test_from_pretrained_path_loads_local_weights(tmp_path, tokenizer):
    original = build_causal_lm(ModelConfig(preset="debug"), tokenizer, seed=3)
    original.save_pretrained(tmp_path / "m")
    loaded = build_causal_lm(ModelConfig(name_or_path=str(tmp_path / "m")), tokenizer)
    ids = torch.tensor([[2, 5, 7, 9]])
    torch.testing.assert_close(loaded(ids).logits, original(ids).logits)
