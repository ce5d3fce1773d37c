"""Routing metrics (RouteLLM, RouterBench) on counterfactual outcomes, and calibration.

A two-model router gives each query a score ``p`` (higher: more in need of the strong model);
at a threshold ``t`` a query goes to the strong model when ``p >= t``. Sweeping ``t`` over every
distinct score gives points (strong share ``s``, mean quality ``Q(s)``), from always-cheap
(``s = 0``) to always-strong (``s = 1``).

- ``PGR(s) = (Q(s) - Q_cheap) / (Q_strong - Q_cheap)``: performance-gap recovered.
- **APGR**: area under PGR over ``s`` in [0, 1] (trapezoid): 0.5 for a random router in
  expectation, up to 1 when a few queries carry the whole gap and the router finds them first.
- **CPT(x)**: the smallest strong share among the sweep's points with ``PGR >= x``.
- **Convex hull**: the upper convex hull of the points (a mix of two thresholds reaches any
  point between them), made non-decreasing (a larger budget never has to do worse: flat after
  its best point); ``hull_area`` is its area in PGR units over ``s`` in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class RoutingCurve:
    """The threshold sweep of one router: arrays (K,) from always-cheap to always-strong."""

    threshold: np.ndarray
    strong_share: np.ndarray
    quality: np.ndarray
    pgr: np.ndarray


def routing_curve(
    scores: Sequence[float], cheap_quality: Sequence[float], strong_quality: Sequence[float]
) -> RoutingCurve:
    """Sweep the threshold over every distinct score (ties go together)."""
    scores = np.asarray(scores, dtype=float)
    cheap = np.asarray(cheap_quality, dtype=float)
    strong = np.asarray(strong_quality, dtype=float)
    n = len(scores)
    if n == 0 or not len(cheap) == len(strong) == n:
        raise ValueError(f"routing: need as many scores as outcomes, got {n}, {len(cheap)}")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    gain = np.concatenate([[0.0], np.cumsum((strong - cheap)[order])])  # gain of top-k to strong
    # Cut only where the next score differs: a threshold cannot split ties.
    cuts = [0, *[k for k in range(1, n) if sorted_scores[k] != sorted_scores[k - 1]], n]
    thresholds = [np.inf, *[sorted_scores[k - 1] for k in cuts[1:]]]
    share = np.array(cuts, dtype=float) / n
    quality = (cheap.sum() + gain[cuts]) / n
    return RoutingCurve(np.array(thresholds), share, quality, _pgr(quality, cheap, strong))


def _pgr(quality: np.ndarray, cheap: np.ndarray, strong: np.ndarray) -> np.ndarray:
    gap = strong.mean() - cheap.mean()
    if abs(gap) < 1e-12:
        return np.zeros_like(quality)
    return (quality - cheap.mean()) / gap


def apgr(curve: RoutingCurve) -> float:
    """Area under PGR(strong share) over [0, 1]."""
    return float(np.trapezoid(curve.pgr, curve.strong_share))


def cpt(curve: RoutingCurve, target_pgr: float) -> float:
    """Smallest strong share with PGR >= ``target_pgr`` (1.0 if only always-strong reaches it)."""
    reached = curve.strong_share[curve.pgr >= target_pgr - 1e-12]
    return float(reached.min()) if len(reached) else 1.0


def upper_hull(x: Sequence[float], y: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The non-decreasing upper convex hull of points (x, y), extended flat to ``max(x)``."""
    points = sorted(zip(np.asarray(x, float), np.asarray(y, float), strict=True))
    hull: list[tuple[float, float]] = []
    for point in points:
        while len(hull) >= 2 and _cross(hull[-2], hull[-1], point) >= 0:
            hull.pop()
        hull.append(point)
    xs, ys = np.array([p[0] for p in hull]), np.array([p[1] for p in hull])
    best = int(np.argmax(ys))
    xs, ys = xs[: best + 1], ys[: best + 1]
    x_max = max(p[0] for p in points)
    if xs[-1] < x_max:
        xs, ys = np.append(xs, x_max), np.append(ys, ys[-1])
    return xs, ys


def _cross(o: tuple, a: tuple, b: tuple) -> float:
    return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])


def hull_area(x: Sequence[float], y: Sequence[float]) -> float:
    """Area under :func:`upper_hull` from ``min(x)`` to ``max(x)``."""
    xs, ys = upper_hull(x, y)
    return float(np.trapezoid(ys, xs))


def router_metrics(curve: RoutingCurve, cpt_targets: Sequence[float]) -> dict[str, float]:
    """APGR, CPT at each target (``cpt_50`` for 0.5), hull area (PGR units)."""
    metrics = {"apgr": apgr(curve)}
    for target in cpt_targets:
        metrics[f"cpt_{round(target * 100)}"] = cpt(curve, target)
    metrics["hull_area"] = hull_area(curve.strong_share, curve.pgr)
    return metrics


# --- baselines --------------------------------------------------------------------------------


def random_scores(n: int, seed: int) -> np.ndarray:
    """A random router: uniform scores, seeded."""
    return np.random.default_rng(seed).random(n)


def oracle_scores(cheap_quality: Sequence[float], strong_quality: Sequence[float]) -> np.ndarray:
    """The exact oracle: route by the true gain of the strong model (known for our models)."""
    return np.asarray(strong_quality, float) - np.asarray(cheap_quality, float)


# --- calibration ------------------------------------------------------------------------------


def calibrate_threshold(calibration_scores: Sequence[float], target_share: float) -> float:
    """The threshold sending ``target_share`` of the calibration queries to the strong model
    (``score >= threshold``): the ``1 - target_share`` quantile of the scores.

    Raises:
        ValueError: ``target_share`` outside [0, 1], or no calibration scores.
    """
    if not 0.0 <= float(target_share) <= 1.0:
        raise ValueError(f"target_share: {target_share!r} is outside [0, 1]")
    scores = np.asarray(calibration_scores, dtype=float)
    if len(scores) == 0:
        raise ValueError("calibration: no calibration scores")
    if target_share <= 0:
        return float(np.inf)
    if target_share >= 1:
        return float(-np.inf)
    return float(np.quantile(scores, 1.0 - target_share, method="higher"))


def strong_share(scores: Sequence[float], threshold: float) -> float:
    """The share of queries with ``score >= threshold``."""
    return float(np.mean(np.asarray(scores, dtype=float) >= threshold))


# --- a ladder of models -----------------------------------------------------------------------


def ladder_choice(p_good: np.ndarray, tau: float) -> np.ndarray:
    """Cheapest rung predicted good enough: ``p_good`` (N, R-1) is P(score >= 4) of each rung
    below the strongest; the first rung with ``p_good >= tau`` is taken, else the strongest.
    Returns rung indices (N,)."""
    good = p_good >= tau
    first = np.argmax(good, axis=1)
    return np.where(good.any(axis=1), first, p_good.shape[1])


def ladder_curve(p_good: np.ndarray, quality: np.ndarray, cost: np.ndarray, taus: Sequence[float]):
    """(mean cost, mean quality) of :func:`ladder_choice` at each ``tau``; ``quality`` and
    ``cost`` are (N, R)."""
    rows = np.arange(quality.shape[0])
    points = []
    for tau in taus:
        chosen = ladder_choice(p_good, tau)
        points.append((float(cost[rows, chosen].mean()), float(quality[rows, chosen].mean())))
    return np.array(points)


def ladder_oracle_curve(quality: np.ndarray, cost: np.ndarray, lambdas: Sequence[float]):
    """The exact oracle over the ladder: each query takes the rung maximising
    ``quality - lambda * cost``, for each ``lambda``; returns (mean cost, mean quality) points."""
    rows = np.arange(quality.shape[0])
    points = []
    for lam in lambdas:
        chosen = np.argmax(quality - lam * cost, axis=1)
        points.append((float(cost[rows, chosen].mean()), float(quality[rows, chosen].mean())))
    return np.array(points)


def label_gap_means(gaps: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The mean quality gap (strongest minus rung) of the training queries with each score
    1..5 (pooled over the lower rungs): what a predicted score means in quality units.
    Returns (5,); a score no training query has takes the mean of its neighbours' values."""
    gaps, labels = np.asarray(gaps, float), np.asarray(labels, int)
    means = np.full(5, np.nan)
    for score in range(1, 6):
        picked = labels == score
        if picked.any():
            means[score - 1] = gaps[picked].mean()
    if np.isnan(means).all():
        raise ValueError("ladder: no labelled training queries to read the score scale from")
    known = ~np.isnan(means)
    means[~known] = np.interp(np.flatnonzero(~known), np.flatnonzero(known), means[known])
    return means


def expected_gaps(distributions: np.ndarray, gap_means: np.ndarray) -> np.ndarray:
    """Predicted gap to the strongest rung, ``sum_s P(s) * gap_means[s]``: (N, R-1, 5) score
    distributions of the lower rungs -> (N, R) with 0 for the strongest rung."""
    predicted = np.asarray(distributions, float) @ np.asarray(gap_means, float)  # (N, R-1)
    return np.concatenate([predicted, np.zeros((predicted.shape[0], 1))], axis=1)


def lambda_choice(predicted_gap: np.ndarray, rung_cost: np.ndarray, lam: float) -> np.ndarray:
    """The rung maximising predicted quality minus ``lam`` x cost: ``argmax_r (-gap_r -
    lam * cost_r)`` (the strongest rung's quality is common to every rung and cancels).
    ``predicted_gap`` (N, R), ``rung_cost`` (R,) or (N, R): the cost known *before* answering
    (a rung's mean measured cost). Ties go to the cheaper rung. Returns rung indices (N,)."""
    cost = np.broadcast_to(np.asarray(rung_cost, float), predicted_gap.shape)
    objective = -predicted_gap - lam * cost
    return np.argmax(objective, axis=1)


def lambda_curve(
    predicted_gap: np.ndarray,
    rung_cost: np.ndarray,
    quality: np.ndarray,
    cost: np.ndarray,
    lambdas: Sequence[float],
) -> np.ndarray:
    """(mean realised cost, mean realised quality) of :func:`lambda_choice` at each lambda;
    ``quality`` and ``cost`` (N, R) are the measured outcomes."""
    rows = np.arange(quality.shape[0])
    points = []
    for lam in lambdas:
        chosen = lambda_choice(predicted_gap, rung_cost, lam)
        points.append((float(cost[rows, chosen].mean()), float(quality[rows, chosen].mean())))
    return np.array(points)


def lambda_for_budget(
    predicted_gap: np.ndarray, rung_cost: np.ndarray, budget: float, lambdas: Sequence[float]
) -> float:
    """The smallest lambda whose choices on calibration queries cost at most ``budget`` on
    average (in the units of ``rung_cost``); the largest lambda if none does."""
    ordered = sorted(float(lam) for lam in lambdas)
    cost = np.asarray(rung_cost, float)
    for lam in ordered:
        if cost[lambda_choice(predicted_gap, cost, lam)].mean() <= budget + 1e-12:
            return lam
    return ordered[-1]
