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


def count_parameters(architecture: str, vocab_size: int) -> tuple[int, int]:
    """(all parameters, parameters outside the token embedding) of ``small``, built on the
    meta device (shapes only: no memory, no initialisation)."""
    from transformers import AutoModelForCausalLM

    from router_pipelines.models.presets import transformers_config

    hf_config = transformers_config(
        ModelConfig(preset="small", architecture=architecture), vocab_size, {}
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    total = sum(p.numel() for p in model.parameters())  # the tied LM head counts once
    return total, total - model.get_input_embeddings().weight.numel()


def test_small_preset_is_15m_at_8192_tokens_and_30m_at_gpt2s_vocabulary():
    shape = PRESETS["small"]
    assert (shape["n_layer"], shape["hidden"], shape["intermediate"]) == (8, 384, 1024)
    # GPT-2 by hand: per block 4*384^2 attention + 2*384*1024 MLP weights, biases, 2 norms
    block = 4 * 384 * 384 + 4 * 384 + 2 * 384 * 1024 + 1024 + 384 + 4 * 384
    outside_wte = 8 * block + 1024 * 384 + 2 * 384  # blocks, position table, final norm
    assert count_parameters("gpt2", 8192) == (outside_wte + 8192 * 384, outside_wte)
    assert outside_wte == 11_439_872
    assert round(count_parameters("gpt2", 8192)[0] / 1e6, 1) == 14.6  # the project's tokenizer
    assert round(count_parameters("gpt2", 50257)[0] / 1e6, 1) == 30.7  # the study's ~30M
    assert round(count_parameters("llama", 8192)[0] / 1e6, 1) == 17.3  # SwiGLU: 3 MLP matrices


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
