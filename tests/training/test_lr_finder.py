"""The learning-rate range test."""

from __future__ import annotations

import io
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from training_tiny import tiny_gpt2

from router_pipelines.training import LRFinderResult, causal_lm_loss, find_lr, plot_lr_finder


def test_find_lr_restores_the_model_and_suggests_a_finite_lr(make_config, train_data):
    model = tiny_gpt2(0, dropout=0.1)
    model.eval()
    model.transformer.h[0].train()  # a mixed mode, restored module by module
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes_before = [m.training for m in model.modules()]
    rng_before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    config = make_config(save_steps=1, save_at_end=True, eval_steps=1)  # all ignored
    result = find_lr(
        model, causal_lm_loss, train_data, config, start_lr=1e-5, end_lr=10.0, num_steps=30
    )
    torch.testing.assert_close(model.state_dict(), before, atol=0, rtol=0)
    assert [m.training for m in model.modules()] == modes_before
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng_before[0])
    assert random.getstate() == rng_before[1]
    assert (np.random.get_state()[1] == rng_before[2]).all()
    assert not Path(config.output_dir).exists()  # no checkpoints, no run folder
    assert 3 <= len(result.lrs) == len(result.losses) == len(result.raw_losses) <= 30
    assert result.lrs[0] == pytest.approx(1e-5)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([(10.0 / 1e-5) ** (1 / 29)] * len(ratios))
    assert result.suggestion is not None and math.isfinite(result.suggestion)
    assert 1e-5 < result.suggestion < result.lrs[-1]
    # The smoothed loss at the suggestion is below the starting loss: it is on the descent.
    assert result.losses[result.lrs.index(result.suggestion)] <= result.losses[0]


def test_find_lr_stops_when_the_loss_diverges(make_config, train_data):
    result = find_lr(
        tiny_gpt2(0),
        causal_lm_loss,
        train_data,
        make_config(max_grad_norm=None),
        start_lr=1e-3,
        end_lr=1e4,
        num_steps=60,
        smoothing=0.5,
    )
    assert len(result.lrs) < 60


def test_find_lr_rejects_a_bad_range(make_config, train_data):
    with pytest.raises(ValueError, match="^start_lr/end_lr"):
        find_lr(tiny_gpt2(0), causal_lm_loss, train_data, make_config(), start_lr=1, end_lr=0.1)
    with pytest.raises(ValueError, match="^num_steps"):
        find_lr(tiny_gpt2(0), causal_lm_loss, train_data, make_config(), num_steps=1)


def test_plot_lr_finder_draws_the_curve_and_suggestion():
    result = LRFinderResult(
        lrs=[1e-4, 1e-3, 1e-2, 1e-1], losses=[4.0, 3.5, 2.0, 5.0], suggestion=1e-2
    )
    figure = plot_lr_finder(result)
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    assert ax.get_xscale() == "log"
    assert list(ax.lines[0].get_xdata()) == result.lrs
    assert list(ax.lines[1].get_xdata()) == [1e-2, 1e-2]  # the suggestion marker
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue().startswith(b"\x89PNG")
