import pytest
import torch
from torch import nn

from router_pipelines.families.switchable import bit_report


class StubQuantLinear(nn.Module):
    """Just the QuantLinear surface bit_report reads, plus a learnable quantizer parameter."""

    def __init__(self, in_features: int, out_features: int, bias: bool):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.zeros(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.step_sizes = nn.Parameter(torch.ones(3))  # training state: not counted


class StubSwitchable(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 32)  # 320 params
        self.norm = nn.LayerNorm(32)  # 64 params
        self.a = StubQuantLinear(32, 16, bias=True)  # 512 weights + 16 bias
        self.b = StubQuantLinear(64, 32, bias=False)  # 2048 weights
        self.head = nn.Linear(32, 10, bias=False)
        self.head.weight = self.embed.weight  # tied: counted once
        self.widths = {"a": (4, 8), "b": (8, 8)}

    def quant_modules(self):
        return {"a": self.a, "b": self.b}

    def precision_map(self):
        return dict(self.widths)


def test_mixed_widths_by_hand():
    report = bit_report(StubSwitchable())
    # a: 512 x (4 + 16/32) = 2304 bits; b: 2048 x (8 + 16/64) = 16896 bits
    assert report["effective_bits"] == pytest.approx(19200 / 2560)  # 7.5
    # other params: 320 embedding + 64 norm + 16 bias = 400 at 16 bits
    assert report["total_params"] == 2960
    assert report["quantized_weights"] == 2560
    assert report["model_bits_per_param"] == pytest.approx((19200 + 6400) / 2960)
    # bytes: a 256 codes + 32 scales; b 2048 codes + 64 scales; others 800
    assert report["weight_bytes"] == 3200
    assert report["compression_ratio_fp16"] == pytest.approx(16 / 7.5)
    assert report["compression_ratio_fp32"] == pytest.approx(32 / 7.5)
    assert report["model_compression_fp16"] == pytest.approx(16 * 2960 / 25600)
    assert report["model_compression_fp32"] == pytest.approx(32 * 2960 / 25600)


def test_brief_example_four_bit_in_32():
    model = StubSwitchable()
    model.widths = {"a": (4, None), "b": (4, None)}
    model.b = StubQuantLinear(32, 16, bias=False)
    assert bit_report(model)["effective_bits"] == pytest.approx(4.5)


def test_full_precision_layer_counts_sixteen_bits():
    model = StubSwitchable()
    model.widths = {"a": (None, None), "b": (8, 8)}
    report = bit_report(model)
    assert report["effective_bits"] == pytest.approx((512 * 16 + 16896) / 2560)  # 9.8
    assert report["weight_bytes"] == 1024 + 2048 + 64 + 800
    model.widths = {"a": (None, None), "b": (None, None)}
    report = bit_report(model)
    assert report["effective_bits"] == 16
    assert report["compression_ratio_fp16"] == 1
    assert report["model_compression_fp32"] == 2
    assert report["weight_bytes"] == 2 * 2960


def test_odd_width_rounds_bytes_up():
    model = StubSwitchable()
    model.a = StubQuantLinear(20, 1, bias=False)  # 20 weights x 3 bits = 60 bits -> 8 bytes
    model.widths = {"a": (3, None), "b": (8, None)}
    report = bit_report(model)
    assert report["weight_bytes"] == 8 + 2 + 2048 + 64 + 2 * (320 + 64)


def test_missing_precision_entry_raises():
    model = StubSwitchable()
    model.widths = {"a": (4, 4)}
    with pytest.raises(ValueError, match="'b'"):
        bit_report(model)


def test_switchable_gpt2_uniform_four_bit_by_hand(tiny_switchable):
    tiny_switchable.set_precision(4)
    report = bit_report(tiny_switchable)
    # per block: c_attn 192x64, attn.c_proj 64x64, c_fc 256x64 at 4 + 16/64; mlp.c_proj 64x256
    # at 4 + 16/256
    block_bits = (12288 + 4096 + 16384) * 4.25 + 16384 * 4.0625
    assert report["quantized_weights"] == 2 * 49152
    assert report["effective_bits"] == pytest.approx(block_bits / 49152)  # 4.1875
    # the rest: wte 128x64, wpe 64x64, ln_f 128, per block 2 norms (256) + biases (576);
    # the tied LM head is wte; quantizer steps are not counted
    others = 8192 + 4096 + 128 + 2 * (256 + 576)
    assert report["total_params"] == 2 * 49152 + others
    model_bits = (2 * block_bits + 16 * others) / (2 * 49152 + others)
    assert report["model_bits_per_param"] == pytest.approx(model_bits)
    # 4-bit codes + fp16 scales (2 x 576 rows) + fp16 rest
    assert report["weight_bytes"] == 2 * 49152 // 2 + 2 * 2 * 576 + 2 * others


def test_switchable_gpt2_layer_wise_by_hand(tiny_switchable):
    tiny_switchable.set_layer_precision(
        [{"attn_bits": 8, "mlp_bits": 2}, {"attn_bits": None, "mlp_bits": 4}]
    )
    report = bit_report(tiny_switchable)
    block0 = (12288 + 4096) * (8 + 0.25) + 16384 * (2 + 0.25) + 16384 * (2 + 0.0625)
    block1 = (12288 + 4096) * 16 + 16384 * (4 + 0.25) + 16384 * (4 + 0.0625)
    assert report["effective_bits"] == pytest.approx((block0 + block1) / (2 * 49152))


def test_quantized_tied_embedding_and_head_count_one_table(tiny_switchable_tables):
    model = tiny_switchable_tables
    model.set_precision(4)
    report = bit_report(model)
    block_bits = (12288 + 4096 + 16384) * 4.25 + 16384 * 4.0625
    # wte (128 x 64, also the LM head: counted once) and wpe (64 x 64), one fp16 scale per row
    tables = (8192 + 4096) * (4 + 16 / 64)
    quantized = 2 * 49152 + 8192 + 4096
    assert report["quantized_weights"] == quantized
    assert report["effective_bits"] == pytest.approx((2 * block_bits + tables) / quantized)
    others = 128 + 2 * (256 + 576)  # ln_f, per block 2 norms + biases
    assert report["total_params"] == quantized + others
    rows = 2 * 576 + 128 + 64
    assert report["weight_bytes"] == quantized // 2 + 2 * rows + 2 * others


def test_a_shared_table_at_two_widths_is_refused(tiny_switchable_tables):
    model = tiny_switchable_tables
    model.set_precision(4)
    model.model.lm_head.set_bits(8, 8)
    with pytest.raises(ValueError, match="lm_head .8 bits. shares its weight with transformer.wte"):
        bit_report(model)
