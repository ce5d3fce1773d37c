"""The Dynamic Transformer's surprises and gate against a float64 reference written from the
formulas (loops, no shared code)."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from router_pipelines.models.depth_routing import DepthRoutingConfig, DTFConfig
from router_pipelines.models.dtf import SurpriseGate, causal_moving_average, prior_ffn_width


def _reference(original, posterior, prior, beta_ce, beta_cu, m_cu, o_ce, window):
    batch, length, width = original.shape
    out = {
        key: torch.zeros(batch, length, dtype=torch.float64)
        for key in ("d_st", "d_ch", "gate", "s_ce", "s_cu")
    }
    for b in range(batch):
        d_st = [
            float(((posterior[b, t] - original[b, t]) ** 2).sum()) / width for t in range(length)
        ]
        for t in range(length):
            d_ch = float(((posterior[b, t] - prior[b, t]) ** 2).sum()) / width
            recent = d_st[max(0, t - window + 1) : t + 1]
            ce = d_st[t] - (d_ch - math.log(o_ce))
            cu = d_st[t] - m_cu * sum(recent) / len(recent)
            # the paper's eqs. 3.10-3.11: positive inverse temperatures softplus(beta)
            s_ce = 1 / (1 + math.exp(-math.log1p(math.exp(beta_ce)) * ce))
            s_cu = 1 / (1 + math.exp(-math.log1p(math.exp(beta_cu)) * cu))
            for key, value in (
                ("d_st", d_st[t]),
                ("d_ch", d_ch),
                ("s_ce", s_ce),
                ("s_cu", s_cu),
                ("gate", s_ce + s_cu - s_ce * s_cu),
            ):
                out[key][b, t] = value
    return out


def test_gate_and_surprises_match_a_float64_reference():
    torch.manual_seed(0)
    dtf = DTFConfig(
        beta_ce_init=2.0,
        beta_cu_init=-1.5,
        cu_detection_multiplier_init=1.1,
        ce_criterion_offset_init=1.025,
        ma_window=5,
    )
    gate = SurpriseGate(DepthRoutingConfig(model_type="dtf", dtf=dtf))
    original = torch.randn(2, 12, 16)
    posterior = original + 0.5 * torch.randn(2, 12, 16)
    prior = original + 0.5 * torch.randn(2, 12, 16)
    got = gate(original, posterior, prior)
    params = (gate.beta_ce, gate.beta_cu, gate.cu_multiplier, gate.log_ce_offset.exp())
    assert_close([float(p.detach()) for p in params], [2.0, -1.5, 1.1, 1.025])  # the inits
    states = (original.double(), posterior.double(), prior.double())
    expected = _reference(*states, *(float(p.detach()) for p in params), 5)
    for key in expected:
        assert_close(got[key].double(), expected[key], rtol=1e-5, atol=1e-6)
    # in float64 the module agrees to float64 precision
    got64 = gate.double()(original.double(), posterior.double(), prior.double())
    for key in expected:
        assert_close(got64[key], expected[key], rtol=1e-7, atol=1e-9)
    assert (got["s_ce"] - got["s_cu"]).abs().max() > 0.05  # the two criteria really differ


def test_moving_average_with_history_equals_the_whole_sequence():
    values = torch.rand(2, 20, dtype=torch.float64)
    whole = causal_moving_average(values, 6)
    for split in (1, 5, 13):
        tail = causal_moving_average(
            values[:, split:], 6, history=values[:, max(0, split - 5) : split]
        )
        assert_close(tail, whole[:, split:])
    assert_close(whole[:, 10], values[:, 5:11].mean(dim=1))
    assert_close(whole[:, 2], values[:, :3].mean(dim=1))


def test_prior_ffn_is_the_papers_bias_free_swiglu_of_the_hidden_size():
    from depth_routing_helpers import routed, tiny_qwen2

    model = routed(
        tiny_qwen2(), model_type="dtf", dtf=DTFConfig(prior_ffn_intermediate_size_factor=0.25)
    )
    pair = model.routed_modules()[0]
    ffn = pair.prior_ffn
    assert ffn.gate_proj.out_features == ffn.up_proj.out_features == 8  # 0.25 × hidden 32
    assert all(linear.bias is None for linear in (ffn.gate_proj, ffn.up_proj, ffn.down_proj))
    x = torch.randn(3, 32)
    swiglu = torch.nn.functional.silu(x @ ffn.gate_proj.weight.T) * (x @ ffn.up_proj.weight.T)
    assert_close(ffn(x), swiglu @ ffn.down_proj.weight.T)
    assert len(model.routed_modules()) == 2  # 4 blocks → 2 (decision, dynamic) pairs
    # max(2, ⌈d·f⌉ rounded up to even): the paper's 384 × 0.0625 = 24, odd widths go up
    assert [prior_ffn_width(d, f) for d, f in ((384, 0.0625), (100, 0.05), (8, 0.01))] == [24, 6, 2]


def test_the_gates_temperatures_are_positive_whatever_the_raw_parameter():
    gate = SurpriseGate(DepthRoutingConfig(model_type="dtf"))  # raw inits -0.3, -0.6
    beta_ce, beta_cu = gate.inverse_temperatures()
    assert_close(
        [float(beta_ce.detach()), float(beta_cu.detach())],
        [math.log1p(math.exp(-0.3)), math.log1p(math.exp(-0.6))],
    )
    # so a token whose static surprise is far above its recent average gets S_CU near 1
    original = torch.zeros(1, 8, 4)
    posterior = original.clone()
    posterior[0, -1] = 10.0  # only the last token changes, strongly
    got = gate(original, posterior, posterior)
    assert got["s_cu"][0, -1] > 0.99 and got["gate"][0, -1] == got["gate"][0].max()
