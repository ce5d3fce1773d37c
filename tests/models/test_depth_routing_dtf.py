"""The Dynamic Transformer's surprises and gate against a float64 reference written from the
formulas (loops, no shared code)."""

from __future__ import annotations

import math

import torch
from torch.testing import assert_close

from router_pipelines.models.depth_routing import DepthRoutingConfig, DTFConfig
from router_pipelines.models.dtf import SurpriseGate, causal_moving_average


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
            s_ce = 1 / (1 + math.exp(-beta_ce * ce))
            s_cu = 1 / (1 + math.exp(-beta_cu * cu))
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


def test_prior_ffn_width_follows_the_factor():
    from depth_routing_helpers import routed, tiny_qwen2

    model = routed(
        tiny_qwen2(), model_type="dtf", dtf=DTFConfig(prior_ffn_intermediate_size_factor=0.25)
    )
    pair = model.routed_modules()[0]
    assert pair.prior_ffn[0].out_features == 16  # 0.25 × intermediate 64
    assert len(model.routed_modules()) == 2  # 4 blocks → 2 (decision, dynamic) pairs
