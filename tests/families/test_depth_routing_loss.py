"""The depth-routing loss, router statistics and analytic FLOPs (families/depth_routing.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "models"))
from depth_routing_helpers import VOCAB, routed, tiny_qwen2  # noqa: E402

from router_pipelines.families.depth_routing import (  # noqa: E402
    auxiliary_terms,
    flops_per_token,
    make_depth_routing_loss,
    routing_records,
    routing_statistics,
)
from router_pipelines.models.depth_routing import DepthRoutingConfig  # noqa: E402

torch.set_num_threads(1)


def _batch(batch=2, length=16):
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(0))
    return {"input_ids": ids, "labels": ids.clone(), "attention_mask": torch.ones_like(ids)}


@pytest.fixture(scope="module")
def dense():
    return tiny_qwen2()


@pytest.mark.parametrize(
    ("model_type", "terms"),
    [("mod", {"ce", "router_bce", "predictor_bce"}), ("dtf", {"ce", "predictor_bce", "prior_mse"})],
)
def test_loss_terms_and_metrics(dense, model_type, terms):
    model = routed(dense, model_type=model_type, capacity_gamma=0.25).train()
    weights = {"router_bce": 0.5, "predictor_bce": 1.0, "prior_mse": 0.05}
    loss, metrics = make_depth_routing_loss(weights)(model, _batch(), 0)
    assert terms <= set(metrics)
    expected = metrics["ce"] + sum(weights[t] * metrics[t] for t in terms - {"ce"})
    torch.testing.assert_close(loss.detach(), expected)
    assert float(metrics["routed_share"]) == pytest.approx(0.25)
    assert 0 <= float(metrics["predictor_accuracy"]) <= 1
    assert int(metrics["tokens"]) == 2 * 15
    if model_type == "dtf":
        assert 0 < float(metrics["s_ce"]) < 1 and 0 < float(metrics["s_cu"]) < 1


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
def test_a_compiled_training_step_is_one_graph_with_eager_numbers(dense, model_type):
    """torch.compile (the engine's torch_compile) captures a top-k training step whole: no
    count or padding check read off the device in the routed blocks, and AOTAutograd's
    forward and backward give the eager loss and gradients."""
    import torch._dynamo

    batch = {k: v for k, v in _batch().items() if k != "attention_mask"}
    weights = {"router_bce": 0.5, "predictor_bce": 1.0, "prior_mse": 0.05}
    grads, losses = [], []
    for compiled in (False, True):
        model = routed(dense, model_type=model_type, capacity_gamma=0.25).train()
        if compiled:
            torch._dynamo.reset()
            torch._dynamo.utils.counters.clear()  # reset() keeps the counters
            model.compile(backend="aot_eager")
        loss, _ = make_depth_routing_loss(weights)(model, batch, 0)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["graph_break"])
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    torch._dynamo.reset()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-6, atol=1e-6)
    assert grads[1].keys() == grads[0].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)


def test_predictor_loss_trains_only_the_predictor(dense):
    """The predictor reads stop-gradient inputs: its BCE changes no other gradient."""
    grads = []
    for weight in (0.0, 1.0):
        model = routed(dense, model_type="mod", capacity_gamma=0.25).train()
        loss, _ = make_depth_routing_loss({"router_bce": 0.1, "predictor_bce": weight})(
            model, _batch(), 0
        )
        loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    without, with_predictor = grads
    assert not any("predictor" in name for name in without)
    assert any("predictor" in name for name in with_predictor)
    for name, grad in without.items():
        torch.testing.assert_close(with_predictor[name], grad, rtol=0, atol=0)


def test_the_prior_loss_trains_only_the_prior_networks(dense):
    """MSE(prior, stopgrad(posterior)) reaches the PriorFFNs and their norms, nothing below
    them: with the trunk on its path it pulled the hidden states after a moving target and
    they ran away (prior MSE 1e7 within 140 from-scratch steps)."""
    model = routed(dense, model_type="dtf", capacity_gamma=0.5).train()
    model(**_batch())
    auxiliary_terms(routing_records(model))["prior_mse"].backward()
    reached = {
        n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0
    }
    assert reached and all(".prior_ffn." in n or ".prior_norm." in n for n in reached), reached
    assert any(".prior_ffn." in n for n in reached)


def test_routing_statistics_per_layer(dense):
    from tiny_models import ListDataset

    model = routed(dense, model_type="mod", capacity_gamma=0.25)
    batch = _batch(4, 16)
    dataset = ListDataset([{k: v[i] for k, v in batch.items()} for i in range(4)])
    stats = routing_statistics(model, dataset, batch_size=2, max_batches=None)
    assert [row["layer"] for row in stats["layers"]] == [1, 3]
    assert stats["batches"] == 2
    assert all(row["topk_share"] == pytest.approx(0.25) for row in stats["layers"])
    model.calibrate_causal_thresholds([batch["input_ids"]])
    stats = routing_statistics(model, dataset, batch_size=2, max_batches=None)
    # block 1's inputs are the same in both modes: its causal share is the calibrated γ
    assert stats["layers"][0]["causal_share"] == pytest.approx(0.25, abs=1 / 64)


def test_flops_per_token(dense):
    config = dense.config
    t = 64
    plain = flops_per_token(config, None, t)
    d, inter, kv = 32, 64, 16
    block = 2 * (2 * d * d + 2 * d * kv + 3 * d * inter) + 4 * t * d
    assert plain["block_dense"] == block and plain["blocks"] == 4 * block
    assert plain["lm_head"] == 2 * VOCAB * d and plain["total"] == 4 * block + 2 * VOCAB * d
    full = flops_per_token(
        config, DepthRoutingConfig(capacity_gamma=1.0, predictor_hidden_size=8), t
    )
    extras = 2 * (2 * d + 2 * (d * 8 + 8))  # router + predictor on 2 routed blocks
    assert full["blocks"] == pytest.approx(4 * block + extras)
    eighth = flops_per_token(config, DepthRoutingConfig(capacity_gamma=0.125), t)
    half = flops_per_token(config, DepthRoutingConfig(capacity_gamma=0.5), t)
    assert eighth["blocks"] < half["blocks"] < plain["blocks"]
    assert eighth["lm_head"] == plain["lm_head"]  # the head is never routed
    dtf = flops_per_token(config, DepthRoutingConfig(model_type="dtf"), t)
    assert plain["blocks"] / 2 < dtf["blocks"] < plain["blocks"]
