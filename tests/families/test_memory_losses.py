"""Router auxiliary losses against hand-computed values, utilisation metrics, the memory loss."""

from __future__ import annotations

import math

import pytest
import torch
from tiny_models import tiny_gpt2

from router_pipelines.families.memory import (
    chapter_fractions,
    chapter_usage_figure,
    compute_router_auxiliary_loss,
    make_memory_loss,
    router_losses,
    utilisation,
)
from router_pipelines.models.memory import MemoryAdapter, MemoryConfig


def test_uniform_routing_gives_load_balance_1_and_auxiliary_0():
    logits = torch.zeros(4, 4)  # P uniform
    indices = torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]])  # f uniform, top-2
    losses = router_losses(logits, indices)
    assert losses["load_balance"].item() == pytest.approx(1.0)
    assert losses["auxiliary"].item() == pytest.approx(0.0)
    assert losses["z_loss"].item() == pytest.approx(math.log(4) ** 2)


def test_router_losses_match_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    indices = torch.tensor([[0], [0]])  # top-1, both sequences pick chapter 0
    probs = torch.softmax(logits, -1)
    mean_p = probs.mean(0)
    f = torch.tensor([1.0, 0.0, 0.0])
    losses = router_losses(logits, indices)
    assert losses["load_balance"].item() == pytest.approx(3 * float((f * mean_p).sum()))
    assert losses["auxiliary"].item() == pytest.approx((2 / 3) ** 2 + 2 * (1 / 3) ** 2)
    lse = [math.log(math.exp(2) + 2), math.log(math.exp(1) + 2)]
    assert losses["z_loss"].item() == pytest.approx((lse[0] ** 2 + lse[1] ** 2) / 2)
    torch.testing.assert_close(chapter_fractions(indices, 3), f)


def test_the_aggregate_averages_layers_and_weights_the_parts():
    layers = [
        {
            "load_balance": torch.tensor(1.0),
            "auxiliary": torch.tensor(0.2),
            "z_loss": torch.tensor(4.0),
        },
        {
            "load_balance": torch.tensor(3.0),
            "auxiliary": torch.tensor(0.0),
            "z_loss": torch.tensor(2.0),
        },
    ]
    total, parts = compute_router_auxiliary_loss(layers, 0.01, 0.5, 0.001)
    assert total.item() == pytest.approx(0.01 * 2.0 + 0.5 * 0.1 + 0.001 * 3.0)
    assert {k: round(v.item(), 6) for k, v in parts.items()} == {
        "load_balance": 2.0,
        "auxiliary": 0.1,
        "z_loss": 3.0,
    }
    default_total, _ = compute_router_auxiliary_loss(layers)  # seed defaults 0.01, 0.0, 0.001
    assert default_total.item() == pytest.approx(0.01 * 2.0 + 0.001 * 3.0)
    with pytest.raises(ValueError, match="z_loss_coef"):
        compute_router_auxiliary_loss(layers, z_loss_coef=-1.0)
    with pytest.raises(ValueError, match="no memory layer"):
        compute_router_auxiliary_loss([])


def test_load_balance_gradient_pushes_probability_away_from_the_overused_chapter():
    logits = torch.zeros(2, 3, requires_grad=True)
    losses = router_losses(logits, torch.tensor([[0], [0]]))
    losses["load_balance"].backward()
    assert (logits.grad[:, 0] > 0).all() and (logits.grad[:, 1:] < 0).all()


def test_utilisation_uniform_and_collapsed():
    uniform = utilisation(torch.tensor([[5, 5, 5, 5], [2, 2, 2, 2]]))
    assert uniform == {
        "utilisation_entropy": pytest.approx(1.0),
        "utilisation_entropy_min": pytest.approx(1.0),
        "dead_chapters": 0,
        "top1_share": pytest.approx(0.25),
    }
    collapsed = utilisation(torch.tensor([[8, 0, 0, 0], [4, 4, 0, 0]]))
    assert collapsed["utilisation_entropy"] == pytest.approx((0 + 0.5) / 2)
    assert collapsed["utilisation_entropy_min"] == pytest.approx(0.0)
    assert collapsed["dead_chapters"] == 5
    assert collapsed["top1_share"] == pytest.approx(0.75)


def test_memory_loss_is_the_base_ce_at_step_0_plus_the_router_terms():
    torch.manual_seed(0)
    base = tiny_gpt2()
    ids = torch.randint(0, 128, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100  # e.g. a prompt
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    expected_ce = base(**batch).loss
    model = MemoryAdapter(base, MemoryConfig(num_memory_tokens=32, chapter_size=8, num_heads=2))
    loss, metrics = make_memory_loss({"auxiliary": 0.1})(model, batch, 0)
    torch.testing.assert_close(metrics["ce"], expected_ce.detach())
    expected_aux = 0.01 * metrics["load_balance"] + 0.1 * metrics["auxiliary"]
    expected_aux = expected_aux + 0.001 * metrics["z_loss"]
    torch.testing.assert_close(metrics["router_aux_loss"], expected_aux)
    torch.testing.assert_close(loss.detach(), expected_ce.detach() + expected_aux)
    assert int(metrics["tokens"]) == 2 * 6  # labels 4..9 are predicted


def test_chapter_usage_figure_draws_one_series_per_layer():
    figure = chapter_usage_figure([[1, 2, 3, 4], [4, 3, 2, 1]], [0, 3], "usage")
    axis = figure.axes[0]
    assert len(axis.patches) == 8
    assert axis.get_title() == "usage"
