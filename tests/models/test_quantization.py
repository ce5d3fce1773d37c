"""Quantizers against a float64 reference, LSQ gradients, per-width scales, nested codes."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch.testing import assert_close

from router_pipelines.models.quantization import (
    LsqQuantizer,
    MultiWidthQuantizer,
    NestedQuantizer,
    check_bit_width,
    grad_scale,
    quant_range,
)

ALL_WIDTHS = range(2, 9)


def reference_fake_quant(x: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric narrow-range fake quantization in float64, written independently."""
    qp = 2 ** (bits - 1) - 1
    x64, step64 = x.double(), step.double()
    return torch.clamp(torch.round(x64 / step64), -qp, qp) * step64


def test_quant_range_is_symmetric_narrow():
    assert [quant_range(b) for b in (2, 4, 8)] == [(-1, 1), (-7, 7), (-127, 127)]


@pytest.mark.parametrize("bits", ALL_WIDTHS)
def test_per_channel_weights_match_reference_and_grid(bits):
    weight = torch.randn(6, 40) * torch.linspace(0.1, 3.0, 6)[:, None]
    quantizer = LsqQuantizer(bits, num_channels=6)
    out = quantizer(weight)
    step = quantizer.step.detach()[:, None]  # (6, 1)
    assert_close(out.double(), reference_fake_quant(weight, step, bits), rtol=0, atol=1e-6)
    # values lie on the integer grid times the step
    levels = out.double() / step.double()
    assert_close(levels, levels.round(), rtol=0, atol=1e-4)
    qp = 2 ** (bits - 1) - 1
    assert levels.abs().max() <= qp + 1e-4
    # inside the clip range the error is at most half a step
    inside = weight.abs() <= qp * step
    assert ((out - weight).abs()[inside] <= (step / 2).expand_as(weight)[inside] + 1e-6).all()


def test_per_tensor_activation_quantizer_shape_and_reference():
    x = torch.randn(2, 5, 16)
    quantizer = LsqQuantizer(8)
    out = quantizer(x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert quantizer.step.shape == (1,)
    assert_close(
        out.double(), reference_fake_quant(x, quantizer.step.detach(), 8), rtol=0, atol=1e-6
    )


def test_ste_input_gradient_is_one_inside_and_zero_outside():
    quantizer = LsqQuantizer(2)
    with torch.no_grad():
        quantizer.step.fill_(1.0)
        quantizer.initialized.fill_(True)
    x = torch.tensor([0.3, -0.8, 2.5, -1.7, 0.999], requires_grad=True)
    quantizer(x).sum().backward()
    assert_close(x.grad, torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]))


def test_step_gradient_matches_lsq_formula_by_hand():
    # 2 bits: levels -1, 0, 1; step 1. Per element dq/ds = round(x/s) - x/s inside, Qn/Qp
    # outside: 0.3 -> -0.3, -0.8 -> -1 + 0.8 = -0.2, 2.5 -> clipped to +1. Sum 0.5.
    # LSQ scales it by g = 1 / sqrt(N * Qp) = 1 / sqrt(3).
    quantizer = LsqQuantizer(2)
    with torch.no_grad():
        quantizer.step.fill_(1.0)
        quantizer.initialized.fill_(True)
    quantizer(torch.tensor([0.3, -0.8, 2.5])).sum().backward()
    assert_close(quantizer.step.grad, torch.tensor([0.5 / math.sqrt(3)]))


def test_grad_scale_keeps_value_and_scales_gradient():
    x = torch.tensor([0.1234567], requires_grad=True)
    y = grad_scale(x, 0.25)
    assert torch.equal(y, x.detach())  # bit-identical forward
    y.sum().backward()
    assert_close(x.grad, torch.tensor([0.25]))


def test_per_width_scales_are_independent():
    quantizer = MultiWidthQuantizer([2, 4, 8], per_channel=True, channels=4)
    weight = torch.randn(4, 16)
    quantizer(weight, 2)  # initialise the 2-bit step
    before = {b: q.step.detach().clone() for b, q in quantizer.quantizers.items()}
    optimizer = torch.optim.SGD(quantizer.parameters(), lr=0.1)
    (quantizer(weight, 4) - 1.0).pow(2).sum().backward()
    optimizer.step()
    assert torch.equal(quantizer.quantizers["2"].step, before["2"])
    assert quantizer.quantizers["2"].step.grad is None
    assert not torch.equal(quantizer.quantizers["4"].step, before["4"])


def test_full_precision_is_identity():
    x = torch.randn(3, 8)
    assert MultiWidthQuantizer([4], per_channel=True, channels=3)(x, None) is x
    assert NestedQuantizer([2, 4], channels=3)(x, None) is x


def test_initialized_flag_survives_state_dict_round_trip():
    quantizer = LsqQuantizer(4)
    quantizer(torch.randn(32))
    state = quantizer.state_dict()
    assert bool(state["initialized"])
    reloaded = LsqQuantizer(4)
    reloaded.load_state_dict(state)
    reloaded(100 * torch.randn(32))  # a very different batch must not re-initialise
    assert torch.equal(reloaded.step, quantizer.step)


def test_loading_an_uninitialised_state_resets_the_flag_and_pickles():
    fresh_state = MultiWidthQuantizer([4], per_channel=False).state_dict()
    quantizer = MultiWidthQuantizer([4], per_channel=False)
    quantizer(torch.randn(32), 4)
    assert quantizer.is_initialized(4)
    quantizer.load_state_dict(fresh_state)
    assert not quantizer.is_initialized(4)
    copied = pickle.loads(pickle.dumps(quantizer))  # e.g. MLflow's pytorch flavour pickles
    copied(torch.randn(32), 4)
    assert copied.is_initialized(4) and not quantizer.is_initialized(4)


def test_mse_init_beats_lsq_and_max_init():
    weight = torch.randn(64, 256)

    def error(init, bits):
        quantizer = LsqQuantizer(bits, num_channels=64, init=init)
        return (quantizer(weight) - weight).pow(2).mean().item()

    for bits in (2, 4, 8):
        assert error("mse", bits) < error("lsq", bits)
        assert error("mse", bits) <= error("max", bits)
    # golden values at seed 0: relative MSE of the MSE-initialised quantizer
    assert error("mse", 2) / weight.var().item() == pytest.approx(0.1898, abs=2e-3)
    assert error("mse", 4) / weight.var().item() == pytest.approx(0.0126, abs=5e-4)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_multi_width_weight_codes_reconstruct_the_fake_quantized_weight(bits):
    weight = torch.randn(5, 24)
    quantizer = MultiWidthQuantizer([2, 4, 8], per_channel=True, channels=5)
    codes, scale = quantizer.weight_codes(weight, bits)
    assert codes.dtype == torch.int8 and codes.shape == (5, 24)
    assert scale.dtype == torch.float32 and scale.shape == (5,)
    qp = 2 ** (bits - 1) - 1
    assert codes.abs().max() <= qp
    assert_close(codes.float() * scale[:, None], quantizer(weight, bits), rtol=0, atol=1e-6)


def test_per_tensor_weight_codes_expand_scale():
    weight = torch.randn(5, 24)
    quantizer = MultiWidthQuantizer([4], per_channel=False, channels=5)
    codes, scale = quantizer.weight_codes(weight, 4)
    assert scale.shape == (5,) and torch.all(scale == scale[0])
    assert_close(codes.float() * scale[:, None], quantizer(weight, 4), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_nested_codes_are_the_top_bits_of_the_int8_code(bits):
    weight = torch.randn(8, 32)
    quantizer = NestedQuantizer([2, 3, 4, 6, 8], channels=8)
    codes8, scale8 = quantizer.weight_codes(weight, 8)
    codes, scale = quantizer.weight_codes(weight, bits)
    shift = 2 ** (8 - bits)
    qp = 2 ** (bits - 1) - 1
    expected = torch.clamp(torch.round(codes8.double() / shift), -qp, qp).to(torch.int8)
    assert torch.equal(codes, expected)
    assert_close(scale, scale8 * shift)
    assert_close(codes.float() * scale[:, None], quantizer(weight, bits), rtol=0, atol=1e-6)


def test_nested_8_bit_equals_plain_quantizer_with_the_same_step():
    weight = torch.randn(4, 16)
    nested = NestedQuantizer([2, 8], channels=4)
    plain = LsqQuantizer(8, num_channels=4)
    nested(weight, 2)
    with torch.no_grad():
        plain.step.copy_(nested.step)
        plain.initialized.fill_(True)
    assert torch.equal(nested(weight, 8), plain(weight))


def test_nested_shares_one_step_trained_by_every_width():
    weight = torch.randn(4, 16)
    nested = NestedQuantizer([2, 4, 8], channels=4)
    assert [name for name, _ in nested.named_parameters()] == ["step"]
    for bits in (2, 8):
        nested.step.grad = None
        (nested(weight, bits) - weight.flip(1)).pow(2).sum().backward()
        assert nested.step.grad is not None and nested.step.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [1, 9, "four", 4.0, True, None])
def test_bad_bit_widths_are_rejected(bad):
    with pytest.raises(ValueError, match="from 2 to 8"):
        check_bit_width("bits", bad)
    with pytest.raises(ValueError, match="from 2 to 8"):
        MultiWidthQuantizer([2, bad], per_channel=False)


def test_unknown_width_and_init_are_rejected():
    quantizer = MultiWidthQuantizer([2, 4], per_channel=False)
    with pytest.raises(ValueError, match=r"8 is not one of this quantizer's \[2, 4\]"):
        quantizer(torch.randn(3), 8)
    with pytest.raises(ValueError, match="init: 'median'"):
        LsqQuantizer(4, init="median")
