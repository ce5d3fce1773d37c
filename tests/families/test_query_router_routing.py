"""Routing metrics against hand-worked cases, the baselines, calibration and the ladder."""

from __future__ import annotations

import numpy as np
import pytest

from router_pipelines.families.query_router import (
    apgr,
    calibrate_threshold,
    cpt,
    expected_gaps,
    hull_area,
    label_gap_means,
    ladder_choice,
    ladder_curve,
    ladder_oracle_curve,
    lambda_choice,
    lambda_curve,
    lambda_for_budget,
    oracle_scores,
    random_scores,
    router_metrics,
    routing_curve,
    strong_share,
    upper_hull,
)


def test_curve_apgr_and_cpt_on_a_hand_worked_case():
    # Four queries; the strong model gains 1 on query 0 and 0.5 on query 1, nothing elsewhere.
    cheap = [0.0, 0.0, 0.0, 0.0]
    strong = [1.0, 0.5, 0.0, 0.0]
    scores = [0.9, 0.8, 0.1, 0.2]  # the router ranks 0, 1, 3, 2
    curve = routing_curve(scores, cheap, strong)
    np.testing.assert_allclose(curve.strong_share, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(curve.quality, [0, 0.25, 0.375, 0.375, 0.375])
    np.testing.assert_allclose(curve.pgr, [0, 2 / 3, 1, 1, 1])
    # trapezoid: 0.25 * (0 + 2/3)/2 + 0.25 * (2/3 + 1)/2 + 0.25 + 0.25
    assert apgr(curve) == pytest.approx(0.25 / 3 + 0.25 * 5 / 6 + 0.5)
    assert cpt(curve, 0.5) == 0.25
    assert cpt(curve, 0.8) == 0.5
    assert cpt(curve, 0.2) == 0.25


def test_ties_move_together():
    curve = routing_curve([1.0, 1.0, 0.0], [0, 0, 0], [1, 1, 1])
    np.testing.assert_allclose(curve.strong_share, [0, 2 / 3, 1])


def test_perfect_router_has_apgr_near_one_and_random_about_half():
    n = 1000
    rng = np.random.default_rng(0)
    cheap = np.zeros(n)
    strong = np.zeros(n)
    strong[rng.choice(n, 10, replace=False)] = 1.0  # 1% of queries carry the whole gap
    perfect = routing_curve(oracle_scores(cheap, strong), cheap, strong)
    assert apgr(perfect) == pytest.approx(1 - 0.01 / 2)
    assert cpt(perfect, 0.5) == pytest.approx(0.01)  # the 10 tied gains go together
    # A random router recovers the gap in proportion to the calls it makes.
    randoms = [apgr(routing_curve(random_scores(n, seed), cheap, strong)) for seed in range(20)]
    assert np.mean(randoms) == pytest.approx(0.5, abs=0.05)
    cheap_c = rng.normal(size=n)
    strong_c = cheap_c + rng.normal(0.5, 1.0, size=n)
    random_curve = routing_curve(random_scores(n, 1), cheap_c, strong_c)
    assert apgr(random_curve) == pytest.approx(0.5, abs=0.06)


def test_oracle_dominates_every_other_router():
    rng = np.random.default_rng(3)
    n = 300
    cheap = rng.normal(size=n)
    strong = cheap + rng.normal(0.3, 1.0, size=n)  # cheap is better on some queries
    oracle = routing_curve(oracle_scores(cheap, strong), cheap, strong)
    noisy = oracle_scores(cheap, strong) + rng.normal(0, 1.0, size=n)
    for scores in (random_scores(n, 0), noisy, -oracle_scores(cheap, strong), cheap):
        other = routing_curve(scores, cheap, strong)
        oracle_at = np.interp(other.strong_share, oracle.strong_share, oracle.quality)
        assert np.all(oracle_at >= other.quality - 1e-9)
        assert apgr(oracle) >= apgr(other)
        assert hull_area(oracle.strong_share, oracle.pgr) >= hull_area(
            other.strong_share, other.pgr
        )
    assert oracle.pgr.max() > 1  # where cheap is better, the oracle beats always-strong


def test_upper_hull_is_convex_non_decreasing_and_flat_after_its_best():
    xs, ys = upper_hull([0, 0.25, 0.5, 0.75, 1.0], [0, 0.9, 0.8, 1.2, 1.0])
    np.testing.assert_allclose(xs, [0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(ys, [0, 0.9, 1.2, 1.2])
    area = 0.25 * 0.45 + 0.5 * (0.9 + 1.2) / 2 + 0.25 * 1.2
    assert hull_area([0, 0.25, 0.5, 0.75, 1.0], [0, 0.9, 0.8, 1.2, 1.0]) == pytest.approx(area)


def test_router_metrics_names():
    curve = routing_curve([0.9, 0.1], [0, 0], [1, 0])
    metrics = router_metrics(curve, [0.2, 0.5, 0.8])
    assert set(metrics) == {"apgr", "cpt_20", "cpt_50", "cpt_80", "hull_area"}
    assert metrics["cpt_50"] == 0.5


@pytest.mark.parametrize("target", [0.1, 0.2, 0.5, 0.8, 0.95])
def test_calibrated_share_holds_on_held_out_data(target):
    rng = np.random.default_rng(7)
    calibration = rng.beta(2, 5, size=2000)
    held_out = rng.beta(2, 5, size=2000)
    threshold = calibrate_threshold(calibration, target)
    assert strong_share(calibration, threshold) == pytest.approx(target, abs=0.005)
    assert abs(strong_share(held_out, threshold) - target) <= 0.05


def test_calibration_edges_and_bad_target():
    assert strong_share([0.2, 0.4], calibrate_threshold([0.2, 0.4], 0.0)) == 0.0
    assert strong_share([0.2, 0.4], calibrate_threshold([0.2, 0.4], 1.0)) == 1.0
    with pytest.raises(ValueError, match=r"target_share: 1.5 is outside \[0, 1\]"):
        calibrate_threshold([0.2], 1.5)


def test_ladder_takes_the_cheapest_rung_predicted_good_enough():
    p_good = np.array([[0.9, 0.95], [0.2, 0.7], [0.1, 0.3]])
    np.testing.assert_array_equal(ladder_choice(p_good, 0.5), [0, 1, 2])
    np.testing.assert_array_equal(ladder_choice(p_good, 0.0), [0, 0, 0])
    quality = np.array([[1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    cost = np.array([[1.0, 2.0, 4.0]] * 3)
    points = ladder_curve(p_good, quality, cost, [0.0, 0.5, 1.01])
    np.testing.assert_allclose(points, [[1.0, 1 / 3], [7 / 3, 1.0], [4.0, 1.0]])
    oracle = ladder_oracle_curve(quality, cost, [0.0, 0.1, 100.0])
    # lambda 0.1: each query takes its cheapest rung with quality 1
    np.testing.assert_allclose(oracle[1], [7 / 3, 1.0])
    np.testing.assert_allclose(oracle[2], [1.0, 1 / 3])


def test_lambda_rule_picks_the_best_predicted_quality_minus_cost_by_hand():
    # Scores mean these gaps to the strongest rung (training means); score 4 was never seen.
    gaps = np.array([3.0, 2.5, 1.0, 0.2, 0.0, 2.0])
    labels = np.array([1, 1, 2, 3, 5, 2])
    means = label_gap_means(gaps, labels)
    np.testing.assert_allclose(means, [2.75, 1.5, 0.2, 0.1, 0.0])  # 4: between 3 and 5
    # Two queries, rungs (cheap, middle, strong); the lower rungs' score distributions:
    dist = np.zeros((2, 2, 5))
    dist[0, 0, 4] = dist[0, 1, 4] = 1.0  # query 0: both lower rungs surely good (gap 0)
    dist[1, 0, 0] = 1.0  # query 1: the cheap rung fails (gap 2.75) ...
    dist[1, 1, 2] = 1.0  # ... the middle one is fair (gap 0.2)
    predicted = expected_gaps(dist, means)
    np.testing.assert_allclose(predicted, [[0, 0, 0], [2.75, 0.2, 0]])
    cost = np.array([1.0, 2.0, 4.0])
    # lambda 0: quality only (query 1: -2.75, -0.2, 0); ties go to the cheaper rung
    assert lambda_choice(predicted, cost, 0.0).tolist() == [0, 2]
    # lambda 0.4: query 1: -3.15, -1.0, -1.6 -> the middle rung
    assert lambda_choice(predicted, cost, 0.4).tolist() == [0, 1]
    # lambda 5: -7.75, -10.2, -20 -> the cheapest
    assert lambda_choice(predicted, cost, 5.0).tolist() == [0, 0]
    quality = np.array([[5.0, 5.0, 5.0], [0.0, 1.0, 3.0]])
    realised = np.array([[1.0, 2.0, 4.0], [1.5, 2.5, 4.5]])
    points = lambda_curve(predicted, cost, quality, realised, [0.0, 0.4, 5.0])
    np.testing.assert_allclose(points, [[2.75, 4.0], [1.75, 3.0], [1.25, 2.5]])
    # a budget of 1.5 per query: lambda 0.4 costs (1 + 2) / 2 = 1.5 and is the smallest that fits
    assert lambda_for_budget(predicted, cost, 1.5, [0.0, 0.05, 0.4, 5.0]) == 0.4
