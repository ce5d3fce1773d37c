"""combine_losses: weighted sums of auxiliary losses, reported as metrics."""

from __future__ import annotations

import pytest
import torch

from router_pipelines.training import combine_losses


def test_weighted_terms_are_summed_and_reported_unweighted():
    lm = torch.tensor(2.0, requires_grad=True)
    balance = torch.tensor(0.5, requires_grad=True)
    unused_source = torch.tensor(3.0, requires_grad=True)
    distill = unused_source * 2  # a graph that must not reach backward
    total, metrics = combine_losses(
        {"lm": lm, "balance": balance, "distill": distill}, {"balance": 0.1, "distill": 0.0}
    )
    assert total.item() == pytest.approx(2.0 + 0.1 * 0.5)
    assert {k: v.item() for k, v in metrics.items()} == pytest.approx(
        {"lm": 2.0, "balance": 0.5, "distill": 6.0, "total": 2.05}
    )
    assert all(not v.requires_grad for v in metrics.values())  # detached: safe to log
    total.backward()
    assert lm.grad.item() == 1.0 and balance.grad.item() == pytest.approx(0.1)
    assert unused_source.grad is None  # the zero-weight term was not added


@pytest.mark.parametrize(
    ("terms", "weights", "message"),
    [
        ({"lm": 1.0}, {}, r"^terms: 'lm' must be a scalar tensor"),
        ({"lm": torch.ones(2)}, {}, r"^terms: 'lm' must be a scalar tensor"),
        ({"lm": torch.tensor(1.0)}, {"lm_": 1.0}, r"^weights: \['lm_'\] name no loss term"),
        ({"lm": torch.tensor(1.0)}, {"lm": -1.0}, r"^weights: 'lm' must be a finite number"),
        ({"lm": torch.tensor(1.0)}, {"lm": float("inf")}, r"^weights: 'lm' must be a finite"),
        ({"lm": torch.tensor(1.0)}, {"lm": 0.0}, r"^weights: every term has weight 0"),
        ({"total": torch.tensor(1.0)}, {}, r"^terms: \['total'\] are reserved"),
        ({}, {}, r"^terms: no loss term"),
    ],
)
def test_bad_terms_and_weights_are_named(terms, weights, message):
    with pytest.raises(ValueError, match=message):
        combine_losses(terms, weights)
