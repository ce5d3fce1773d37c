import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.models.packed import (
    PackedEmbedding,
    PackedInt4Linear,
    PackedInt8Linear,
    pack_switchable_model,
    packed_linear,
)
from router_pipelines.models.quant_modules import QuantLinear
from router_pipelines.models.quantization import MultiWidthQuantizer, NestedQuantizer
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM

# GPT-2 small's linear shapes (in_features, out_features): c_attn, attn c_proj, c_fc, mlp c_proj
GPT2_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
# bf16 rounds x, the scales and the output (8-bit mantissa): ~1% of the output scale
TOLERANCES = {
    torch.float32: {"rtol": 1e-4, "atol": 1e-4},
    torch.bfloat16: {"rtol": 1e-2, "atol": 1e-2},
}


def random_codes(out_features, in_features, bits, seed=0):
    """Symmetric narrow-range codes, per-row scales and a bias, like QuantLinear's."""
    generator = torch.Generator().manual_seed(seed)
    qp = 2 ** (bits - 1) - 1
    codes = torch.randint(-qp, qp + 1, (out_features, in_features), generator=generator)
    scale = torch.rand(out_features, generator=generator) * 0.02 / qp + 1e-4
    bias = torch.randn(out_features, generator=generator) * 0.1
    return codes.to(torch.int8), scale, bias


def reference(x, codes, scale, bias):
    """The fake-quantized linear in float32: x @ (codes * scale).T + bias."""
    return F.linear(x.float(), codes.float() * scale[:, None], bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("packed_cls", "bits"), [(PackedInt8Linear, 8), (PackedInt4Linear, 4)])
@pytest.mark.parametrize(("in_features", "out_features"), GPT2_SHAPES)
def test_kernel_matches_fake_quantized_reference(
    packed_cls, bits, in_features, out_features, dtype
):
    codes, scale, bias = random_codes(out_features, in_features, bits)
    layer = packed_cls(codes, scale, bias)
    x = torch.randn(2, 5, in_features, generator=torch.Generator().manual_seed(1)).to(dtype)
    y = layer(x)
    assert y.shape == (2, 5, out_features)
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), reference(x, codes, scale, bias), **TOLERANCES[dtype])


def test_int4_uses_largest_allowed_group():
    codes, scale, bias = random_codes(32, 96, 4)  # 96 = 3 x 32: only group size 32 divides it
    layer = PackedInt4Linear(codes, scale, None)
    assert layer.group_size == 32
    x = torch.randn(3, 96, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(layer(x), reference(x, codes, scale, None), rtol=1e-4, atol=1e-4)
    assert PackedInt4Linear(*random_codes(16, 768, 4)).group_size == 256


def test_int4_full_code_range_maps_exactly():
    # Every code -8..7 once per row: catches an off-by-one in the +8 offset or the nibble order.
    codes = torch.arange(-8, 8).repeat(16, 2).to(torch.int8)  # (16, 32)
    scale = torch.ones(16)
    layer = PackedInt4Linear(codes, scale, None)
    identity = torch.eye(32)
    torch.testing.assert_close(layer(identity), codes.float().t(), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("out_features", "in_features", "message"), [(16, 48, "in_features"), (10, 64, "out_features")]
)
def test_int4_rejects_shapes_the_kernel_cannot_take(out_features, in_features, message):
    codes = torch.zeros(out_features, in_features, dtype=torch.int8)
    with pytest.raises(ValueError, match=message):
        PackedInt4Linear(codes, torch.ones(out_features), None)


def test_rejects_codes_out_of_range_and_bad_scales():
    with pytest.raises(ValueError, match="-8..7"):
        PackedInt4Linear(torch.full((16, 32), 9, dtype=torch.int8), torch.ones(16), None)
    with pytest.raises(ValueError, match="scale"):
        PackedInt8Linear(torch.zeros(16, 32, dtype=torch.int8), torch.ones(15), None)
    with pytest.raises(ValueError, match="int8"):
        PackedInt8Linear(torch.zeros(16, 32, dtype=torch.int32), torch.ones(16), None)


def make_quant_linear(in_features, out_features, nested):
    """A QuantLinear at GPT-2 scale with its weight steps set directly (no slow MSE init)."""
    torch.manual_seed(3)
    linear = nn.Linear(in_features, out_features)
    nn.init.normal_(linear.weight, std=0.02)
    if nested:
        weight_quantizer = NestedQuantizer([4, 8], out_features)
        weight_quantizer.step.data = linear.weight.abs().amax(dim=1) / 127
        weight_quantizer.initialized.fill_(True)
    else:
        weight_quantizer = MultiWidthQuantizer([4, 8], True, out_features, init="max")
    act_quantizer = MultiWidthQuantizer([8], per_channel=False)
    return QuantLinear.from_module(linear, weight_quantizer, act_quantizer)


@pytest.mark.parametrize("compute_dtype", [None, torch.bfloat16])
@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize(("packed_cls", "bits"), [(PackedInt8Linear, 8), (PackedInt4Linear, 4)])
@pytest.mark.parametrize(("in_features", "out_features"), [(768, 2304), (3072, 768)])
def test_packed_quant_linear_matches_weight_only_fake_quant(
    packed_cls, bits, nested, compute_dtype, in_features, out_features
):
    quant_linear = make_quant_linear(in_features, out_features, nested)
    quant_linear.set_bits(bits, None)  # packed kernels are weight-only
    packed = packed_cls.from_quant_linear(quant_linear, compute_dtype)
    x = torch.randn(4, 3, in_features, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected = quant_linear(x)
        got = packed(x)
    assert got.dtype == torch.float32
    tolerances = TOLERANCES[compute_dtype or torch.float32]
    torch.testing.assert_close(got, expected, **tolerances)


def tiny_switchable(n_embd: int = 64) -> SwitchableLM:
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=n_embd,
        n_head=2,
        vocab_size=128,
        n_positions=64,
        bos_token_id=0,
        eos_token_id=0,
    )
    model = GPT2LMHeadModel(config)
    return SwitchableLM.from_base(model, SwitchableConfig(bit_widths=[2, 4, 8])).eval()


@pytest.mark.parametrize("bits", [8, 4])
def test_packed_model_logits_match_weight_only_fake_quant(bits):
    model = tiny_switchable()
    input_ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        model.set_precision(bits, act_bits=None)
        expected = model(input_ids=input_ids).logits
        model.set_precision(None)
        packed = pack_switchable_model(model, bits)
        packed_bf16 = pack_switchable_model(model, bits, compute_dtype=torch.bfloat16)
        got = packed(input_ids=input_ids).logits
        got_bf16 = packed_bf16(input_ids=input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_bf16, expected, rtol=2e-2, atol=2e-2)
    kind = PackedInt8Linear if bits == 8 else PackedInt4Linear
    assert sum(isinstance(m, kind) for m in packed.modules()) == 8  # 4 linears x 2 blocks
    assert packed.quant_linears() == {}
    # the source model is untouched: still QuantLinears, still at full precision
    assert len(model.quant_linears()) == 8
    assert set(model.precision_map().values()) == {(None, None)}


def test_packed_model_decodes_with_the_kv_cache():
    packed = pack_switchable_model(tiny_switchable(), 4, compute_dtype=torch.bfloat16)
    input_ids = torch.tensor([[1, 2, 3]])
    with torch.inference_mode():
        first = packed(input_ids=input_ids, use_cache=True)
        step = packed(input_ids=torch.tensor([[4]]), past_key_values=first.past_key_values)
    assert step.logits.shape == (1, 1, 128)


@pytest.mark.parametrize("bits", [2, 3, 16])
def test_widths_without_a_kernel_raise(bits):
    with pytest.raises(NotImplementedError, match=rf"no packed kernel for {bits}-bit"):
        pack_switchable_model(tiny_switchable(), bits)


def test_width_the_model_lacks_raises():
    model = tiny_switchable()
    model.switchable_config.bit_widths = [2, 8]  # as if built without 4-bit quantizers
    with pytest.raises(ValueError, match=r"bits: 4 is not a width of this model"):
        pack_switchable_model(model, 4)


def test_int4_unsupported_shape_raises_naming_the_layer():
    model = tiny_switchable(n_embd=48)  # in_features 48 is not a multiple of 32
    with pytest.raises(NotImplementedError, match=r"transformer.h.0.attn.c_attn: .*in_features=48"):
        pack_switchable_model(model, 4)
    assert pack_switchable_model(model, 8) is not model  # int8 has no such limit


def test_bad_compute_dtype_raises():
    with pytest.raises(ValueError, match="compute_dtype"):
        PackedInt8Linear(*random_codes(16, 32, 8), compute_dtype=torch.int8)


@pytest.mark.parametrize("bits", [8, 4])
def test_packed_model_with_quantized_tables_matches_fake_quant(bits):
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=128, n_positions=64)
    switchable = SwitchableConfig(
        bit_widths=[4, 8], quantize_lm_head=True, quantize_embeddings=True
    )
    model = SwitchableLM.from_base(GPT2LMHeadModel(config), switchable).eval()
    input_ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        model.set_precision(bits, act_bits=None)
        expected = model(input_ids=input_ids).logits
        packed = pack_switchable_model(model, bits)
        got = packed(input_ids=input_ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    tables = [m for m in packed.modules() if isinstance(m, PackedEmbedding)]
    assert len(tables) == 2 and all(t.codes.dtype == torch.int8 for t in tables)
    assert packed.quant_modules() == {}
    kind = PackedInt8Linear if bits == 8 else PackedInt4Linear
    assert isinstance(packed.model.lm_head, kind)


def test_packed_embedding_rejects_bad_codes():
    with pytest.raises(ValueError, match="scale: expected shape"):
        PackedEmbedding(torch.zeros(4, 8, dtype=torch.int8), torch.ones(3))


@pytest.mark.parametrize(
    ("bits", "kind"), [(2, PackedInt4Linear), (4, PackedInt4Linear), (8, PackedInt8Linear)]
)
def test_packed_linear_runs_each_width_on_the_narrowest_kernel_that_holds_it(bits, kind):
    model = tiny_switchable()
    layer = model.quant_linears()["transformer.h.0.mlp.c_fc"]
    layer.set_bits(bits, None)  # weight-only, like the kernels
    packed = packed_linear(layer, bits)
    x = torch.randn(3, 5, 64, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        torch.testing.assert_close(packed(x), layer(x), rtol=1e-4, atol=1e-4)
    assert isinstance(packed, kind)
    codes, _ = layer.weight_codes(bits)  # a 2-bit layer keeps its own 2-bit codes
    assert int(codes.abs().max()) <= 2 ** (bits - 1)


@pytest.mark.parametrize("bits", [1, 16, True])
def test_packed_linear_refuses_widths_without_a_kernel(bits):
    layer = tiny_switchable().quant_linears()["transformer.h.0.mlp.c_fc"]
    with pytest.raises(NotImplementedError, match=rf"no packed kernel for {bits!r}-bit"):
        packed_linear(layer, bits)
