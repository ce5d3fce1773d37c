"""Static per-layer widths for a budget, and the router's budget calibration.

**Sensitivity** of layer ``l`` at width ``b``: the mean next-token loss on calibration data
with that layer alone at ``b`` and every other layer at the highest width, minus the loss with
all at the highest width (HAWQ-style, measured rather than estimated). The static allocators
minimise ``sum_l s[l, b_l]`` subject to the parameter-weighted mean width
``sum_l p_l b_l / sum_l p_l <= budget``:

- :func:`allocate_exact`: the multiple-choice knapsack solved exactly by dynamic programming
  over integer costs ``p_l b_l / g`` (``g`` the gcd of the layer sizes: equal-sized blocks give
  a handful of states per layer), with no approximation;
- :func:`allocate_greedy`: from all-highest, repeatedly lower the layer whose next lower width
  costs the least sensitivity per bit saved, until the budget holds.

Both trust the separable model: a layer's cost measured with every other layer at the highest
width. At low budgets the other layers are not at the highest width, and the sum can rank
assignments wrongly (on the 1,000-step ``tiny`` base at 2.5 bits the exact allocation lost to
seeded random ones). :func:`allocate_searched` does not assume it: it measures the calibration
loss of whole assignments, every assignment that spends the budget when there are at most
``exhaustive_limit`` of them, otherwise a greedy descent on measured losses, and keeps the best
of those and of the other allocators' choices.

:func:`fisher_sensitivities` is the cheaper estimate (``sensitivity: fisher``): the
Fisher-weighted quantization error of each layer at each width, fed to the same allocators.

**Budget calibration**: the router's hard choice is ``argmax_b(logit_b - price * c_b)`` with
``c_b = (b - b_min) / (b_max - b_min)``; every decision's width falls as ``price`` grows, so
the realised mean bits are monotone in it and a bisection on calibration data finds the price
whose realised mean is closest to the budget.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from functools import reduce
from typing import Any

import numpy as np
import torch

from router_pipelines.families.precision_router.loss import shifted_ce


def mean_bits(widths: Sequence[int], layer_params: Sequence[float]) -> float:
    """Parameter-weighted mean width of one width per layer."""
    total = float(sum(layer_params))
    return float(sum(b * p for b, p in zip(widths, layer_params, strict=True)) / total)


@torch.no_grad()
def calibration_loss(
    router: Any, batches: Sequence[dict[str, torch.Tensor]], widths: Sequence[int]
) -> float:
    """Mean next-token loss over ``batches`` with block ``l`` forced to ``widths[l]``."""
    losses = [
        float(
            shifted_ce(
                router.infer_forward(b["input_ids"], b["attention_mask"], forced=list(widths))[
                    "logits"
                ],
                b["labels"],
            )
        )
        for b in batches
    ]
    return sum(losses) / len(losses)


@torch.no_grad()
def layer_sensitivities(router: Any, batches: Sequence[dict[str, torch.Tensor]]) -> np.ndarray:
    """``(L, n_widths)`` loss increase of each layer alone at each width (see module doc)."""
    widths = router.precisions
    top = widths[-1]
    reference = calibration_loss(router, batches, [top] * router.num_layers)
    table = np.zeros((router.num_layers, len(widths)))
    for layer in range(router.num_layers):
        for column, bits in enumerate(widths[:-1]):
            config = [top] * router.num_layers
            config[layer] = bits
            table[layer, column] = calibration_loss(router, batches, config) - reference
    return table


def fisher_sensitivities(router: Any, batches: Sequence[dict[str, torch.Tensor]]) -> np.ndarray:
    """``(L, n_widths)`` Fisher-weighted quantization error of each layer at each width.

    ``s[l, b] = 1/2 sum_w F_w (W_w - Q_b(W)_w)^2`` over the weights ``w`` of block ``l``'s
    quantized linears, minus the same at the highest width (so the highest column is 0, as
    in :func:`layer_sensitivities`). ``F`` is the diagonal empirical Fisher estimated from
    the squared gradient of the next-token loss at full precision, one gradient per
    calibration batch (HAWQ-V2 / DP-LLM's ``g_l ||W - Q_b(W)||^2``, per weight). One backward
    per batch instead of ``L * (n - 1)`` forwards per batch; the frozen weights get
    ``requires_grad`` only while their gradients are taken and are never changed.
    """
    quantized = router.quantized
    layers = [layer for routed in router._routed for layer in routed]
    weights = [layer.weight for layer in layers]
    fisher = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    saved = quantized.precision_map()
    try:
        with router.routing(None), torch.enable_grad():
            quantized.set_precision(None)
            for weight in weights:
                weight.requires_grad_(True)
            for batch in batches:
                output = quantized.model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    use_cache=False,
                )
                loss = shifted_ce(output.logits, batch["labels"])
                for total, grad in zip(fisher, torch.autograd.grad(loss, weights), strict=True):
                    total += grad.detach().float().pow(2) / len(batches)
    finally:
        for weight in weights:
            weight.requires_grad_(False)
        quantized.set_precision_map(saved)
    widths = router.precisions
    table = np.zeros((router.num_layers, len(widths)))
    position = 0
    with torch.no_grad():
        for index, routed in enumerate(router._routed):
            for layer in routed:
                weight, f = layer.weight.float(), fisher[position]
                position += 1
                for column, bits in enumerate(widths):
                    error = weight - layer.weight_quantizer(layer.weight, bits).float()
                    table[index, column] += 0.5 * float((f * error.pow(2)).sum())
    return table - table[:, -1:]


SENSITIVITIES = {"loss": layer_sensitivities, "fisher": fisher_sensitivities}


def allocate_exact(
    sensitivity: np.ndarray, layer_params: Sequence[int], widths: Sequence[int], budget: float
) -> list[int] | None:
    """The widths minimising total sensitivity at mean width <= ``budget`` (None: infeasible)."""
    params = [int(p) for p in layer_params]
    unit = reduce(math.gcd, params)
    capacity = math.floor(budget * sum(params) / unit + 1e-9)
    states: dict[int, tuple[float, tuple[int, ...]]] = {0: (0.0, ())}
    for layer, size in enumerate(params):
        following: dict[int, tuple[float, tuple[int, ...]]] = {}
        for cost, (value, chosen) in states.items():
            for column, bits in enumerate(widths):
                new_cost = cost + size // unit * bits
                if new_cost > capacity:
                    continue
                candidate = (value + float(sensitivity[layer, column]), (*chosen, bits))
                best = following.get(new_cost)
                if best is None or candidate[0] < best[0] - 1e-15:
                    following[new_cost] = candidate
        states = following
    if not states:
        return None
    return list(min(states.values(), key=lambda item: (item[0], -sum(item[1])))[1])


def allocate_greedy(
    sensitivity: np.ndarray, layer_params: Sequence[int], widths: Sequence[int], budget: float
) -> list[int] | None:
    """Greedy: lower the cheapest layer (sensitivity per bit saved) until within budget."""
    columns = [len(widths) - 1] * len(layer_params)
    total = float(sum(layer_params))

    def current() -> float:
        return mean_bits([widths[c] for c in columns], layer_params)

    while current() > budget + 1e-9:
        best, best_ratio = None, math.inf
        for layer, column in enumerate(columns):
            if column == 0:
                continue
            gain = float(sensitivity[layer, column - 1] - sensitivity[layer, column])
            saved = layer_params[layer] * (widths[column] - widths[column - 1]) / total
            if gain / saved < best_ratio:
                best, best_ratio = layer, gain / saved
        if best is None:
            return None
        columns[best] -= 1
    return [widths[c] for c in columns]


def spending_assignments(
    layer_params: Sequence[int], widths: Sequence[int], budget: float, limit: int
) -> list[list[int]] | None:
    """Every assignment within ``budget`` that spends it (no single layer can be raised to its
    next width without exceeding it), in lexicographic order; ``None`` when there are more
    than ``limit`` (the depth-first enumeration stops there)."""
    params = [int(p) for p in layer_params]
    unit = reduce(math.gcd, params)
    sizes = [p // unit for p in params]
    capacity = math.floor(budget * sum(params) / unit + 1e-9)
    lowest = widths[0]
    found: list[list[int]] = []

    def spends(columns: list[int]) -> bool:
        used = sum(s * widths[c] for s, c in zip(sizes, columns, strict=True))
        return all(
            c == len(widths) - 1 or used + s * (widths[c + 1] - widths[c]) > capacity
            for s, c in zip(sizes, columns, strict=True)
        )

    def visit(columns: list[int], used: int) -> bool:  # False: over the limit, stop
        layer = len(columns)
        if layer == len(sizes):
            if spends(columns):
                found.append([widths[c] for c in columns])
            return len(found) <= limit
        rest = sum(sizes[layer + 1 :]) * lowest  # the cheapest completion of the later layers
        for column, bits in enumerate(widths):
            cost = used + sizes[layer] * bits
            if cost + rest > capacity:
                break
            if not visit([*columns, column], cost):
                return False
        return True

    if not visit([], 0):
        return None
    return found


def allocate_searched(
    loss: Callable[[tuple[int, ...]], float],
    layer_params: Sequence[int],
    widths: Sequence[int],
    budget: float,
    exhaustive_limit: int,
    extra: Iterable[Sequence[int]] = (),
) -> tuple[list[int] | None, str]:
    """The assignment within ``budget`` with the lowest measured ``loss(widths)`` (calibration
    loss of the whole assignment) and how it was found:

    - ``exhaustive``: the best of every assignment that spends the budget
      (:func:`spending_assignments`), when there are at most ``exhaustive_limit``;
    - ``greedy``: otherwise, from all-highest, lower one layer to its next width at a time,
      the one whose measured loss increase per parameter-weighted bit saved is the smallest,
      until the budget holds (``L`` evaluations a move, at most ``L * (n_widths - 1)`` moves;
      the descent does not depend on the budget, so with a memoised ``loss`` every budget
      shares one).

    Either way the ``extra`` assignments (those of the other allocators) compete too: a loss
    need not fall with every added bit, so an assignment that leaves part of the budget unspent
    can measure lower, and the search is then never worse than them on the rows it measures.
    ``loss`` is called with tuples; memoise it to share evaluations across budgets.
    """
    extras = [list(c) for c in extra if mean_bits(c, layer_params) <= budget + 1e-9]

    def best(candidates: list[list[int]]) -> list[int] | None:
        pool = candidates + extras
        return min(pool, key=lambda c: (loss(tuple(c)), -sum(c))) if pool else None

    candidates = spending_assignments(layer_params, widths, budget, exhaustive_limit)
    if candidates is not None:
        return best(candidates), "exhaustive"
    total = float(sum(layer_params))
    columns = [len(widths) - 1] * len(layer_params)
    current = loss(tuple(widths[c] for c in columns))
    while mean_bits([widths[c] for c in columns], layer_params) > budget + 1e-9:
        move: tuple[float, int, float] | None = None
        for layer, column in enumerate(columns):
            if column == 0:
                continue
            trial = list(columns)
            trial[layer] -= 1
            value = loss(tuple(widths[c] for c in trial))
            saved = layer_params[layer] * (widths[column] - widths[column - 1]) / total
            ratio = (value - current) / saved
            if move is None or ratio < move[0]:
                move = (ratio, layer, value)
        if move is None:
            return best([]), "greedy"
        columns[move[1]] -= 1
        current = move[2]
    return best([[widths[c] for c in columns]]), "greedy"


def random_assignments(
    n_layer: int,
    layer_params: Sequence[int],
    widths: Sequence[int],
    budget: float,
    count: int,
    seed: int,
    draws: int = 2000,
) -> list[list[int]]:
    """``count`` seeded random per-layer assignments with mean width <= ``budget``, the ones
    closest to it (so they are compared at nearly equal bits)."""
    rng = random.Random(seed)
    seen: dict[tuple[int, ...], float] = {}
    for _ in range(draws):
        config = tuple(rng.choice(widths) for _ in range(n_layer))
        bits = mean_bits(config, layer_params)
        if bits <= budget + 1e-9:
            seen[config] = bits
    ranked = sorted(seen, key=lambda c: (budget - seen[c], c))
    return [list(c) for c in ranked[:count]]


@torch.no_grad()
def realised_bits(router: Any, batches: Iterable[dict[str, torch.Tensor]], price: float) -> float:
    """Mean bits the router's hard choice realises on ``batches`` at ``price``."""
    with router.routing("infer", price=price), router.tallying() as tally:
        for batch in batches:
            router(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                use_cache=False,
            )
    return tally.mean_bits()


def calibrate_price(
    router: Any,
    batches: Sequence[dict[str, torch.Tensor]],
    budget: float,
    iterations: int = 14,
) -> tuple[float, float]:
    """The price whose realised mean bits on ``batches`` is closest to ``budget``.

    Returns:
        ``(price, realised mean bits on batches)``.
    """
    low, high = -1.0, 1.0
    for _ in range(20):  # widen until the budget lies between the two ends
        if realised_bits(router, batches, low) >= budget:
            break
        low *= 2
    for _ in range(20):
        if realised_bits(router, batches, high) <= budget:
            break
        high *= 2
    best = min(
        ((p, realised_bits(router, batches, p)) for p in (low, high)),
        key=lambda item: abs(item[1] - budget),
    )
    for _ in range(iterations):
        middle = (low + high) / 2
        bits = realised_bits(router, batches, middle)
        if abs(bits - budget) < abs(best[1] - budget):
            best = (middle, bits)
        if bits > budget:
            low = middle
        else:
            high = middle
    return best
