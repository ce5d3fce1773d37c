import pytest
import torch
import torch.nn.functional as F

from router_pipelines.models.packed import PackedInt4Linear, PackedInt8Linear

# GPT-2 small's linear shapes (in_features, out_features): c_attn, attn c_proj, c_fc, mlp c_proj
GPT2_SHAPES = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
# bf16 rounds x, the scales and the output (8-bit mantissa): ~1% of the output scale
TOLERANCES = {torch.float32: {"rtol": 1e-4, "atol": 1e-4}, torch.bfloat16: {"rtol": 1e-2, "atol": 1e-2}}


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
