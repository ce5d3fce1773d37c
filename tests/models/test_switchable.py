"""QuantLinear, make_switchable and SwitchableLM on tiny GPT-2 and Llama models."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama
from torch import nn
from torch.testing import assert_close
from transformers.pytorch_utils import Conv1D

from router_pipelines.config import config_from_dict
from router_pipelines.models.quantization import MultiWidthQuantizer, NestedQuantizer
from router_pipelines.models.switchable import (
    QuantEmbedding,
    QuantLinear,
    SwitchableConfig,
    SwitchableLM,
    make_switchable,
)

GPT2_LINEARS = [
    f"transformer.h.{i}.{name}"
    for i in range(2)
    for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
]
LLAMA_LINEARS = [
    f"model.layers.{i}.{name}"
    for i in range(2)
    for name in (
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    )
]


@pytest.fixture
def input_ids() -> torch.Tensor:
    return torch.randint(0, 128, (2, 12))


def quantizers_for(out_features: int) -> tuple[MultiWidthQuantizer, MultiWidthQuantizer]:
    weight_quantizer = MultiWidthQuantizer([2, 4, 8], per_channel=True, channels=out_features)
    return weight_quantizer, MultiWidthQuantizer([8], per_channel=False)


def test_quant_linear_at_full_precision_equals_nn_linear():
    linear = nn.Linear(16, 24)
    layer = QuantLinear.from_module(linear, *quantizers_for(24))
    assert layer.weight is linear.weight  # reused, not copied
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), linear(x))


def test_quant_linear_at_full_precision_equals_conv1d():
    conv = Conv1D(24, 16)  # GPT-2 layout: weight (in, out)
    nn.init.normal_(conv.bias)
    layer = QuantLinear.from_module(conv, *quantizers_for(24))
    assert layer.weight.shape == (24, 16)
    x = torch.randn(3, 5, 16)
    assert torch.equal(layer(x), conv(x))


def test_quant_linear_quantizes_weights_and_activations():
    linear = nn.Linear(16, 24)
    layer = QuantLinear.from_module(linear, *quantizers_for(24))
    layer.set_bits(4, 8)
    x = torch.randn(7, 16)
    x_q = layer.act_quantizer(x, 8)
    expected = nn.functional.linear(x_q, layer.weight_quantizer(layer.weight, 4), linear.bias)
    assert_close(layer(x), expected)
    codes, scale = layer.weight_codes(4)
    assert_close(codes.float() * scale[:, None], layer.weight_quantizer(layer.weight, 4))
    with pytest.raises(ValueError, match="act_bits: 4 is not one of"):
        layer.set_bits(4, 4)


def test_make_switchable_gpt2_swaps_exactly_the_block_linears():
    model = tiny_gpt2()
    embedding = model.transformer.wte
    swapped = make_switchable(model, SwitchableConfig())
    assert swapped == GPT2_LINEARS
    quant = sorted(n for n, m in model.named_modules() if isinstance(m, QuantLinear))
    assert quant == sorted(GPT2_LINEARS)
    assert not any(isinstance(m, Conv1D) for m in model.modules())
    assert type(model.lm_head) is nn.Linear and model.transformer.wte is embedding
    assert model.lm_head.weight is model.transformer.wte.weight  # still tied


def test_make_switchable_llama_swaps_exactly_the_block_linears():
    model = tiny_llama()
    assert make_switchable(model, SwitchableConfig(nested=True)) == LLAMA_LINEARS
    assert type(model.lm_head) is nn.Linear
    assert type(model.model.embed_tokens) is nn.Embedding
    assert isinstance(model.model.layers[0].mlp.up_proj.weight_quantizer, NestedQuantizer)


def test_tied_gpt2_head_and_embeddings_share_one_quantized_table():
    model = tiny_gpt2()
    config = SwitchableConfig(quantize_lm_head=True, quantize_embeddings=True)
    swapped = make_switchable(model, config)
    assert swapped == ["transformer.wte", "transformer.wpe", *GPT2_LINEARS, "lm_head"]
    wte, wpe = model.transformer.wte, model.transformer.wpe
    assert isinstance(model.lm_head, QuantLinear)
    assert isinstance(wte, QuantEmbedding) and isinstance(wpe, QuantEmbedding)
    assert model.lm_head.weight is wte.weight
    assert model.lm_head.weight_quantizer is wte.weight_quantizer  # one code table
    assert wpe.weight_quantizer is not wte.weight_quantizer
    assert model.get_input_embeddings() is wte


@pytest.mark.parametrize(
    ("head", "embeddings"), [(True, False), (False, True)], ids=["head_only", "embeddings_only"]
)
def test_tied_model_refuses_to_quantize_only_one_side(head, embeddings):
    model = tiny_gpt2()
    config = SwitchableConfig(quantize_lm_head=head, quantize_embeddings=embeddings)
    with pytest.raises(ValueError, match=rf"quantize_lm_head \({head}\) and quantize_embeddings"):
        make_switchable(model, config)
    # nothing was swapped
    assert type(model.lm_head) is nn.Linear
    assert type(model.transformer.wte) is nn.Embedding
    assert type(model.transformer.h[0].attn.c_attn) is Conv1D


def test_untied_llama_quantizes_embeddings_alone():
    model = tiny_llama()
    swapped = make_switchable(model, SwitchableConfig(quantize_embeddings=True))
    assert swapped == ["model.embed_tokens", *LLAMA_LINEARS]
    assert isinstance(model.model.embed_tokens, QuantEmbedding)
    assert type(model.lm_head) is nn.Linear
    tied = tiny_llama(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="LlamaForCausalLM ties its token embedding"):
        make_switchable(tied, SwitchableConfig(quantize_embeddings=True))


def test_quantized_embeddings_follow_the_precision(input_ids):
    base = tiny_gpt2()
    config = SwitchableConfig(quantize_lm_head=True, quantize_embeddings=True)
    model = SwitchableLM.from_base(copy.deepcopy(base), config)
    assert set(model.quant_embeddings()) == {"transformer.wte", "transformer.wpe"}
    assert len(model.quant_modules()) == len(model.quant_linears()) + 2
    with torch.no_grad():
        assert torch.equal(model(input_ids=input_ids).logits, base(input_ids=input_ids).logits)
        model.set_precision(4)
        precision = model.precision_map()
        assert precision["transformer.wte"] == (4, None)
        assert precision["lm_head"] == (4, 8)
        wte = model.model.transformer.wte
        expected = wte.weight_quantizer(wte.weight, 4)[input_ids]
        assert torch.equal(wte(input_ids), expected)
        assert not torch.equal(expected, base.transformer.wte(input_ids))
    model.set_layer_precision([{"attn_bits": 8, "mlp_bits": 2}] * 2)  # blocks only
    assert model.precision_map()["transformer.wpe"] == (4, None)
    model.set_precision(None)
    assert model.initialize_quantizers(input_ids) == [2, 4, 8]
    assert all(m.weight_quantizer.is_initialized(2) for m in model.quant_embeddings().values())


def test_embedding_steps_learn(input_ids):
    config = SwitchableConfig(quantize_lm_head=True, quantize_embeddings=True)
    model = SwitchableLM.from_base(tiny_gpt2(), config).train()
    model.set_precision(2)
    model(input_ids=input_ids, labels=input_ids).loss.backward()
    wpe = model.model.transformer.wpe
    shared = model.model.transformer.wte.weight_quantizer.quantizers["2"].step
    assert wpe.weight_quantizer.quantizers["2"].step.grad.abs().sum() > 0
    assert shared.grad.abs().sum() > 0  # from the look-up and the LM head
    assert model.model.transformer.wte.weight.grad.abs().sum() > 0


def test_make_switchable_refuses_a_model_without_linears():
    model = tiny_gpt2()
    make_switchable(model, SwitchableConfig())
    with pytest.raises(ValueError, match="already switchable"):
        make_switchable(model, SwitchableConfig())


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_full_precision_logits_equal_the_base_model(build, input_ids):
    base = build()
    switchable = SwitchableLM.from_base(copy.deepcopy(base), SwitchableConfig())
    switchable.set_precision(None)
    with torch.no_grad():
        assert_close(
            switchable(input_ids=input_ids).logits, base(input_ids=input_ids).logits, rtol=0, atol=0
        )
        # quantized widths really change the logits, 8 bits much less than 2 bits
        switchable.set_precision(8)
        error8 = (
            (switchable(input_ids=input_ids).logits - base(input_ids=input_ids).logits).abs().max()
        )
        switchable.set_precision(2)
        error2 = (
            (switchable(input_ids=input_ids).logits - base(input_ids=input_ids).logits).abs().max()
        )
    assert 0 < error8 < error2


def test_set_precision_reaches_every_layer_with_the_act_policy():
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig(act_bits="same"))
    model.set_precision(4)
    assert set(model.precision_map().values()) == {(4, 4)}
    model.set_precision("fp")
    assert set(model.precision_map().values()) == {(None, None)}
    fixed = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig())
    fixed.set_precision(2)
    assert set(fixed.precision_map().values()) == {(2, 8)}
    fixed.set_precision(2, act_bits=None)
    assert set(fixed.precision_map().values()) == {(2, None)}


def test_set_precision_rejects_widths_the_model_lacks():
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig(bit_widths=[4, 8]))
    with pytest.raises(ValueError, match=r"bits: 2 bits is not a width of this model.*\[4, 8\]"):
        model.set_precision(2)
    with pytest.raises(ValueError, match="act_bits: 4 bits has no activation quantizer"):
        model.set_precision(4, act_bits=4)


def test_set_layer_precision_reaches_exactly_the_intended_modules():
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig())
    model.set_layer_precision([{"attn_bits": 8, "mlp_bits": 4}, {"attn_bits": 2, "mlp_bits": "fp"}])
    assert model.precision_map() == {
        "transformer.h.0.attn.c_attn": (8, 8),
        "transformer.h.0.attn.c_proj": (8, 8),
        "transformer.h.0.mlp.c_fc": (4, 8),
        "transformer.h.0.mlp.c_proj": (4, 8),
        "transformer.h.1.attn.c_attn": (2, 8),
        "transformer.h.1.attn.c_proj": (2, 8),
        "transformer.h.1.mlp.c_fc": (None, None),
        "transformer.h.1.mlp.c_proj": (None, None),
    }


def test_set_layer_precision_on_llama():
    model = SwitchableLM.from_base(tiny_llama(), SwitchableConfig(act_bits=None))
    model.set_layer_precision([{"attn_bits": 4, "mlp_bits": 8}, {"attn_bits": 8, "mlp_bits": 2}])
    precision = model.precision_map()
    assert {precision[f"model.layers.0.self_attn.{p}_proj"] for p in "qkvo"} == {(4, None)}
    assert precision["model.layers.0.mlp.down_proj"] == (8, None)
    assert precision["model.layers.1.mlp.gate_proj"] == (2, None)


def test_set_layer_precision_errors():
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig())
    with pytest.raises(ValueError, match=r"one dict per transformer block \(2 layers\), got 1"):
        model.set_layer_precision([{"attn_bits": 8, "mlp_bits": 4}])
    with pytest.raises(ValueError, match=r"layer_config\[1\]: unknown key\(s\) \['ffn_bits'\]"):
        model.set_layer_precision(
            [{"attn_bits": 8, "mlp_bits": 4}, {"attn_bits": 8, "ffn_bits": 4}]
        )
    with pytest.raises(ValueError, match=r"layer_config\[0\]\.mlp_bits: 3 bits"):
        model.set_layer_precision(
            [{"attn_bits": 8, "mlp_bits": 3}, {"attn_bits": 8, "mlp_bits": 4}]
        )
    assert set(model.precision_map().values()) == {(None, None)}  # nothing half-applied


@pytest.mark.parametrize("bad", ["four", 1, 9])
def test_switchable_config_rejects_bad_widths(bad):
    with pytest.raises(ValueError, match=rf"bit_widths: {bad!r} .*from 2 to 8"):
        SwitchableConfig(bit_widths=[2, bad])


def test_switchable_config_other_errors():
    with pytest.raises(ValueError, match="bit_widths: .* repeats"):
        SwitchableConfig(bit_widths=[4, 4])
    with pytest.raises(ValueError, match="act_bits: 'fixed'"):
        SwitchableConfig(act_bits="fixed")
    with pytest.raises(ValueError, match="quantize_embeddings: expected true or false"):
        SwitchableConfig(quantize_embeddings="yes")
    with pytest.raises(ValueError, match=r"switchable\.step_init: 'median'"):
        config_from_dict(SwitchableConfig, {"step_init": "median"}, "switchable")


def assert_same_logits_at_every_width(model: SwitchableLM, loaded: SwitchableLM) -> None:
    """Identical logits at FP and every width, on new data (no quantizer may re-initialise)."""
    other_ids = torch.randint(0, 128, (2, 12))
    with torch.no_grad():
        for bits in (None, 2, 4, 8):
            model.set_precision(bits)
            loaded.set_precision(bits)
            assert torch.equal(
                loaded(input_ids=other_ids).logits, model(input_ids=other_ids).logits
            )


def test_save_and_load_round_trip_gives_identical_logits(tmp_path, input_ids):
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig(nested=True, act_bits="same"))
    with torch.no_grad():
        for bits in (2, 4, 8):  # initialises every quantizer
            model.set_precision(bits)
            model(input_ids=input_ids)
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json",
        "switchable_config.json",
        "model.safetensors",
    }
    assert json.loads((tmp_path / "switchable_config.json").read_text())["nested"] is True
    loaded = SwitchableLM.from_pretrained(tmp_path)
    assert loaded.model.lm_head.weight is loaded.model.transformer.wte.weight
    loaded.eval()
    assert_same_logits_at_every_width(model, loaded)


def test_round_trip_with_quantized_tied_embeddings(tmp_path, input_ids):
    config = SwitchableConfig(quantize_lm_head=True, quantize_embeddings=True)
    model = SwitchableLM.from_base(tiny_gpt2(), config)
    model.initialize_quantizers(input_ids)
    model.save_pretrained(tmp_path)
    loaded = SwitchableLM.from_pretrained(tmp_path).eval()
    wte = loaded.model.transformer.wte
    assert isinstance(wte, QuantEmbedding)
    assert loaded.model.lm_head.weight_quantizer is wte.weight_quantizer
    assert_same_logits_at_every_width(model, loaded)


def test_from_pretrained_names_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        SwitchableLM.from_pretrained(tmp_path)


def test_initialize_quantizers_prepares_every_width_once(input_ids):
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig(act_bits="same"))
    model.set_layer_precision([{"attn_bits": 8, "mlp_bits": 2}, {"attn_bits": 4, "mlp_bits": None}])
    before = model.precision_map()
    flags = [b for n, b in model.named_buffers() if n.endswith("initialized")]
    assert len(flags) == 8 * 6 and not any(flags)  # 3 weight + 3 activation widths per layer
    assert model.initialize_quantizers(input_ids) == [2, 4, 8]
    assert all(flags)
    assert not model.model.training and model.training  # modes restored
    assert model.precision_map() == before
    assert model.initialize_quantizers(input_ids, bit_widths=[4, None]) == []


def test_gradient_checkpointing_gives_the_same_gradients(input_ids):
    base = tiny_gpt2()
    models = [SwitchableLM.from_base(copy.deepcopy(base), SwitchableConfig()) for _ in range(2)]
    models[1].gradient_checkpointing_enable({"use_reentrant": False})
    assert models[1].model.is_activation_checkpointing
    for model in models:  # the first forward (lazy quantizer init) runs under checkpointing
        model.train()
        model.set_precision(2)
        model(input_ids=input_ids, labels=input_ids).loss.backward()
    for (name, plain), (_, checkpointed) in zip(
        models[0].named_parameters(), models[1].named_parameters(), strict=True
    ):
        assert_close(checkpointed.grad, plain.grad, msg=name)


def test_generate_at_a_width(input_ids):
    model = SwitchableLM.from_base(tiny_gpt2(), SwitchableConfig())
    model.set_precision(4)
    tokens = model.generate(input_ids[:, :4], max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert tokens.shape == (2, 7)


def test_wrapper_delegates_config_and_rejects_unswapped_models():
    base = tiny_gpt2()
    with pytest.raises(ValueError, match="from_base"):
        SwitchableLM(base, SwitchableConfig())
    model = SwitchableLM.from_base(base, SwitchableConfig())
    assert model.config is base.config and model.num_layers == 2
    assert list(model.quant_linears()) == GPT2_LINEARS


def test_an_embedding_that_cannot_be_quantized_leaves_the_model_untouched():
    model = tiny_llama()
    model.model.embed_tokens.max_norm = 1.0
    with pytest.raises(NotImplementedError, match="max_norm"):
        make_switchable(model, SwitchableConfig(quantize_embeddings=True))
    assert not any(isinstance(m, QuantLinear | QuantEmbedding) for m in model.modules())
