"""QuantEmbedding: full precision is nn.Embedding, row-gathered quantization equals
quantize-then-gather (values and gradients), padding rows, codes, and bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from router_pipelines.models.quant_modules import QuantEmbedding
from router_pipelines.models.quantization import MultiWidthQuantizer, NestedQuantizer

NUM, DIM = 40, 24


def quantizer(kind: str) -> nn.Module:
    if kind == "nested":
        return NestedQuantizer([2, 4, 8], NUM)
    return MultiWidthQuantizer([2, 4, 8], per_channel=kind == "per_channel", channels=NUM)


def embedding(kind: str, padding_idx: int | None = None) -> QuantEmbedding:
    generator = torch.Generator().manual_seed(0)
    base = nn.Embedding(NUM, DIM, padding_idx=padding_idx)
    with torch.no_grad():
        base.weight.copy_(torch.randn(NUM, DIM, generator=generator) * 0.05)
    return QuantEmbedding.from_module(base, quantizer(kind))


def ids() -> torch.Tensor:
    # repeats (row 3 twice) and rows never looked up
    return torch.tensor([[3, 7, 3, 0], [12, 39, 5, 7]])


def test_full_precision_is_the_plain_embedding():
    layer = embedding("per_channel", padding_idx=0)
    assert layer.weight_bits is None and layer.act_bits is None
    assert torch.equal(layer(ids()), F.embedding(ids(), layer.weight))


@pytest.mark.parametrize("kind", ["per_channel", "per_tensor", "nested"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_gathered_rows_equal_quantize_then_gather_values_and_gradients(kind, bits):
    layer = embedding(kind)
    reference = embedding(kind)
    layer.set_bits(bits)
    gathered = layer(ids())
    table = reference.weight_quantizer(reference.weight, bits)  # whole table quantized
    expected = F.embedding(ids(), table)
    assert gathered.shape == (2, 4, DIM)
    assert_close(gathered, expected, rtol=0, atol=0)
    # at 2 bits a row holds at most 3 distinct values: the table really is quantized
    if bits == 2 and kind != "nested":
        assert len(torch.unique(gathered[0, 0])) <= 3

    weights = torch.randn(2, 4, DIM, generator=torch.Generator().manual_seed(1))
    (gathered * weights).sum().backward()
    (expected * weights).sum().backward()
    assert_close(layer.weight.grad, reference.weight.grad)
    for (name, got), (_, want) in zip(
        layer.weight_quantizer.named_parameters(),
        reference.weight_quantizer.named_parameters(),
        strict=True,
    ):
        if want.grad is None:  # steps of widths not used this forward
            assert got.grad is None, name
        else:
            assert_close(got.grad, want.grad, msg=name)
    # rows nobody looked up get no gradient
    assert layer.weight.grad[[1, 2, 4]].abs().sum() == 0


def test_padding_row_gets_no_gradient():
    layer = embedding("per_channel", padding_idx=0)
    layer.set_bits(4)
    layer(ids()).sum().backward()
    assert layer.weight.grad[0].abs().sum() == 0
    step = layer.weight_quantizer.quantizers["4"].step
    assert step.grad[0] == 0
    assert step.grad[3] != 0


@pytest.mark.parametrize("kind", ["per_channel", "nested"])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_weight_codes_rebuild_the_quantized_table(kind, bits):
    layer = embedding(kind)
    layer.set_bits(bits)
    codes, scale = layer.weight_codes(bits)
    qp = 2 ** (bits - 1) - 1
    assert codes.dtype == torch.int8 and codes.shape == (NUM, DIM) and scale.shape == (NUM,)
    assert int(codes.abs().max()) <= qp
    all_rows = torch.arange(NUM)
    with torch.no_grad():
        assert_close(codes.float() * scale[:, None], layer(all_rows), rtol=0, atol=0)


def test_set_bits_and_from_module_errors():
    layer = embedding("per_channel")
    with pytest.raises(ValueError, match=r"weight_bits: 3 is not one of \[2, 4, 8\]"):
        layer.set_bits(3)
    with pytest.raises(ValueError, match="act_bits: embeddings have no activation quantizer"):
        layer.set_bits(4, 8)
    with pytest.raises(NotImplementedError, match="max_norm"):
        QuantEmbedding.from_module(nn.Embedding(NUM, DIM, max_norm=1.0), quantizer("per_channel"))
    with pytest.raises(TypeError, match="expected nn.Embedding"):
        QuantEmbedding.from_module(nn.Linear(DIM, NUM), quantizer("per_channel"))


def test_initialization_follows_the_first_use():
    layer = embedding("per_channel")
    layer.set_bits(4)
    assert not layer.is_initialized()
    layer(ids())
    assert layer.is_initialized()
    layer.set_bits(8)
    assert not layer.is_initialized()
    layer.set_bits(None)
    assert layer.is_initialized()
