"""Does routing beat not routing? The router against static widths at equal mean bits."""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from typing import Any

logger = logging.getLogger(__name__)

KIND_STYLE = {  # marker, colour of each method in the Pareto plot
    "fp": ("*", "black"),
    "uniform": ("s", "tab:gray"),
    "static_exact": ("D", "tab:blue"),
    "static_greedy": ("v", "tab:cyan"),
    "static_searched": ("^", "tab:green"),
    "random": ("x", "tab:olive"),
    "router": ("o", "tab:red"),
    "budget_router": ("P", "tab:purple"),
}


def evaluate_router(
    model: Any,
    train_tokens: Any,
    validation_tokens: Any,
    training_params: dict,
    evaluation_params: dict,
) -> tuple[Any, Any, dict[str, Any]]:
    """Perplexity, bits per byte and realised mean bits of every method at every budget.

    On calibration rows (a seeded random sample of the training rows the router was not
    trained on, see ``row_split``): per-layer sensitivities for the exact and greedy static
    allocators, the measured losses of the searched one, and the router's price for each
    budget. On the validation split: uniform widths, full precision, the exact, greedy and
    searched static assignments, seeded random assignments and the router at each budget
    (plus the static assignments at budget + 0.5 bits, for the gap-recovery figure).

    Returns:
        The evaluation table, the Pareto plot (perplexity against mean bits, every method) and
        the results document (per-budget comparison, router cost, headline metrics).
    """
    from router_pipelines.pipelines.precision_router.nodes import _params

    params = _params(training=training_params, evaluation=evaluation_params)
    table, results = _evaluate(
        model, train_tokens, validation_tokens, params.training, params.evaluation
    )
    _log(results)
    return table, pareto_figure(table), results


def rescore_precision_router(
    bundle: Any,
    train_tokens: Any,
    validation_tokens: Any,
    tokenizer: Any,
    training_params: dict,
    evaluation_params: dict,
) -> dict[str, float]:
    """The registration's metrics (:func:`headline_metrics`) of a registered router (the
    champion, in promotion) on this run's data, evaluated as :func:`evaluate_router` does:
    sensitivities and prices on this run's calibration rows, budget routers trained again on
    this run's training rows, every budget on the validation split. The random assignments and
    speed are left out (no headline metric reads them); nothing is logged.

    Raises:
        ValueError: the bundle holds no precision router, its tokenizer is not the data's, or
            its model has fewer positions than the evaluated rows have tokens.
    """
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.models.precision_router import LayerwiseQuantizeForCausalLM
    from router_pipelines.pipelines.precision_router.nodes import _params
    from router_pipelines.promotion import check_same_tokenizer

    check_same_tokenizer(bundle, tokenizer, "the precision router to re-score")
    if not isinstance(bundle.model, LayerwiseQuantizeForCausalLM):
        raise ValueError(
            f"the precision router to re-score: the bundle holds a {bundle.family!r} model "
            f"({type(bundle.model).__name__}), not a LayerwiseQuantizeForCausalLM"
        )
    params = _params(training=training_params, evaluation=evaluation_params)
    training, config = params.training, params.evaluation
    row_tokens = TokenBlockDataset(validation_tokens).seq_len
    tokens = min(training.seq_len or row_tokens, row_tokens)
    positions = getattr(bundle.model.config, "max_position_embeddings", None)
    if positions is not None and positions < tokens:
        raise ValueError(
            f"the precision router to re-score: its model has {positions} positions, fewer "
            f"than the {tokens} tokens per row evaluated (precision_router.training.seq_len)"
        )
    config = dataclasses.replace(
        config, random_per_budget=0, speed=dataclasses.replace(config.speed, enabled=False)
    )
    _, results = _evaluate(bundle, train_tokens, validation_tokens, training, config)
    return headline_metrics(results)


def headline_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The headline numbers of :func:`comparison`'s results as floats: the metrics the
    registration reports (and a promotion rule compares)."""
    return {k: float(v) for k, v in results.get("headline", {}).items() if v is not None}


def _evaluate(
    bundle: Any, train_tokens: Any, validation_tokens: Any, training: Any, config: Any
) -> tuple[Any, dict[str, Any]]:
    """The evaluation table and results document of :func:`evaluate_router` for the parsed
    ``training`` and ``evaluation`` configs; ``bundle``: the router and its tokenizer."""
    from router_pipelines.data.tokenizer import token_byte_lengths
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.evaluation import evaluate_settings
    from router_pipelines.families.precision_router.allocation import SENSITIVITIES
    from router_pipelines.pipelines.precision_router.data import batches_of, row_split, rows_of

    router = bundle.model
    rows = len(TokenBlockDataset(train_tokens))
    train_rows, calibration_rows = row_split(
        rows, training.num_examples, config.calibration_examples, training.random_state
    )
    calibration_set = rows_of(train_tokens, calibration_rows, training.seq_len)
    calibration = batches_of(calibration_set, config.calibration_batch_size)
    sensitivity = SENSITIVITIES[config.sensitivity](router, calibration)
    budget_training = None
    if config.budget_routers:
        budget_training = (
            rows_of(train_tokens, train_rows, training.seq_len),
            training,
            calibration_set,
        )
    settings = build_settings(router, sensitivity, calibration, config, budget_training)
    if config.speed.enabled and config.speed.packed:  # time every mix on the packed kernels
        settings = [
            dataclasses.replace(s, packed_dtype=config.speed.packed_dtype) for s in settings
        ]
    table = evaluate_settings(
        router,
        settings,
        rows_of(validation_tokens, None, training.seq_len),
        config,
        token_bytes=token_byte_lengths(bundle.tokenizer),
    )
    cost = router_cost(router, calibration[0])
    return table, comparison(table, config.budgets, cost, sensitivity, router.precisions)


def build_settings(
    router: Any,
    sensitivity: Any,
    calibration: list,
    config: Any,
    budget_training: tuple[Any, Any, Any] | None = None,
) -> list[Any]:
    """Every setting the evaluation compares; ``budget_training`` (training rows, parsed
    training config, calibration rows) also trains a router per budget from its best static
    allocation (the one with the lowest calibration loss)."""
    from router_pipelines.families.precision_router import (
        RouterAtBudget,
        StaticWidths,
        allocate_exact,
        allocate_greedy,
        allocate_searched,
        calibrate_price,
        calibration_loss,
        random_assignments,
    )

    widths, n_layer = router.precisions, router.num_layers
    params = [int(p) for p in router.layer_params.tolist()]
    settings: list[Any] = [StaticWidths("fp", "fp", None)]
    settings += [
        StaticWidths(f"uniform_{b}bit", "uniform", (b,) * n_layer, float(b)) for b in widths
    ]
    static_budgets = list(config.budgets)
    if config.half_bit_static:
        static_budgets += [b + 0.5 for b in config.budgets if b + 0.5 <= widths[-1]]

    @functools.cache
    def loss_of(assignment: tuple[int, ...]) -> float:  # shared by every budget's search
        return calibration_loss(router, calibration, assignment)

    starts: dict[float, list[int]] = {}  # the budget routers' static starts
    for budget in dict.fromkeys(static_budgets):
        found: dict[str, list[int]] = {}
        for kind, allocate in (
            ("static_exact", allocate_exact),
            ("static_greedy", allocate_greedy),
        ):
            if kind == "static_greedy" and budget not in config.budgets:
                continue
            chosen = allocate(sensitivity, params, widths, budget)
            if chosen is not None:
                found[kind] = chosen
        if config.static_search:
            chosen, how = allocate_searched(
                loss_of, params, widths, budget, config.search_exhaustive_limit, found.values()
            )
            if chosen is not None:
                found["static_searched"] = chosen
                logger.info("static search at %.2g bits (%s): %s", budget, how, chosen)
        for kind, chosen in found.items():
            settings.append(StaticWidths(f"{kind}_b{budget:g}", kind, tuple(chosen), budget))
        if found and budget in config.budgets and budget_training is not None:
            starts[budget] = min(found.values(), key=lambda c: loss_of(tuple(c)))
    for budget in config.budgets:
        for index, chosen in enumerate(
            random_assignments(
                n_layer, params, widths, budget, config.random_per_budget, config.seed
            )
        ):
            settings.append(
                StaticWidths(f"random_b{budget:g}_{index}", "random", tuple(chosen), budget)
            )
        price, calibrated = calibrate_price(
            router, calibration, budget, config.calibration_iterations
        )
        logger.info(
            "router at %.2g bits: price %.4g realises %.3f bits on calibration",
            budget,
            price,
            calibrated,
        )
        settings.append(RouterAtBudget(f"router_b{budget:g}", budget, price, calibrated))
        if budget_training is not None and budget in starts:
            settings.append(
                _budget_router(
                    router, starts[budget], budget, calibration, config, *budget_training
                )
            )
    return settings


def _budget_router(
    router: Any,
    static_widths: list[int],
    budget: float,
    calibration: list,
    config: Any,
    train_rows: Any,
    training: Any,
    calibration_set: Any,
) -> Any:
    """The router trained for ``budget`` from ``static_widths``, price-calibrated; with
    ``budget_router_selection: calibration``, its static start instead when training did not
    lower the loss on the calibration rows (rows neither the router nor it trained on)."""
    from router_pipelines.families.precision_router import RouterAtBudget, calibrate_price
    from router_pipelines.pipelines.precision_router.budget_routers import (
        static_start,
        train_budget_router,
    )

    name = f"budget_router_b{budget:g}"
    state = train_budget_router(router, static_widths, budget, train_rows, training, config)
    with router.routers_swapped(state):
        price, calibrated = calibrate_price(
            router, calibration, budget, config.calibration_iterations
        )
    logger.info(
        "budget router at %.2g bits: price %.4g realises %.3f bits on calibration",
        budget,
        price,
        calibrated,
    )
    trained = RouterAtBudget(
        name, budget, price, calibrated, "budget_router", router_state=state, selected="trained"
    )
    if config.budget_router_selection == "none":
        return trained
    start_state, start_bits = static_start(router, static_widths, config.static_init_margin)
    start = RouterAtBudget(
        name, budget, 0.0, start_bits, "budget_router", router_state=start_state,
        selected="static start",
    )  # fmt: skip
    losses = [_calibration_loss(router, s, calibration_set, config) for s in (trained, start)]
    chosen = trained if losses[0] < losses[1] else start
    logger.info(
        "budget router at %.2g bits: calibration loss %.4f trained (%.3f bits) vs %.4f at its "
        "static start (%.3f bits): keeps the %s",
        budget,
        losses[0],
        calibrated,
        losses[1],
        start_bits,
        chosen.selected,
    )
    return chosen


def _calibration_loss(router: Any, setting: Any, rows: Any, config: Any) -> float:
    """Mean token loss of ``router`` in ``setting`` on the calibration rows."""
    from router_pipelines.evaluation import evaluate_language_model

    with setting.applied(router):
        return float(
            evaluate_language_model(router, rows, batch_size=config.calibration_batch_size)["loss"]
        )


def router_cost(router: Any, batch: dict) -> dict[str, float]:
    """The routers' FLOPs and measured time as a share of the model's.

    FLOPs: per decision against the model's per token (per sequence routing decides once per
    sequence, so its share per token is this divided by the sequence length). Time: the
    routers' own work (features + MLP) on the block inputs of one batch, against one forward of
    the multi-precision model at its highest width (median of 5).
    """
    import statistics
    import time

    import torch

    inputs: dict[int, torch.Tensor] = {}
    handles = [
        block.register_forward_pre_hook(
            lambda m, a, kw, i=i: inputs.__setitem__(
                i, (a[0] if a else kw["hidden_states"]).detach()
            ),
            with_kwargs=True,
        )
        for i, block in enumerate(router._blocks)
    ]
    ids, mask = batch["input_ids"], batch["attention_mask"]
    quantized = router.quantized
    saved = quantized.precision_map()

    def model_forward() -> None:
        quantized.model(input_ids=ids, attention_mask=mask, use_cache=False)

    def routers_only() -> None:
        router._attention_mask = mask
        for index, hidden in inputs.items():
            router.routers[index](router._features(index, hidden))
        router._attention_mask = None

    try:
        with torch.inference_mode(), router.routing(None):
            quantized.set_precision(router.precisions[-1])
            model_forward()  # fills inputs
            for handle in handles:
                handle.remove()
            timings = {}
            for name, work in (("model", model_forward), ("router", routers_only)):
                work()
                runs = []
                for _ in range(5):
                    begin = time.perf_counter()
                    work()
                    runs.append(time.perf_counter() - begin)
                timings[name] = statistics.median(runs)
    finally:
        for handle in handles:
            handle.remove()
        quantized.set_precision_map(saved)
    flops = router.router_flops_share()
    per_token = flops["router_flops_share"]
    if router.router_config.granularity == "sequence":
        per_token /= ids.shape[1]
    return {
        **flops,
        "router_flops_share_per_token": per_token,
        "router_seconds": timings["router"],
        "model_seconds": timings["model"],
        "router_time_share": timings["router"] / timings["model"],
    }


def comparison(
    table: Any, budgets: list[float], cost: dict, sensitivity: Any, widths: list[int]
) -> dict[str, Any]:
    """Per budget: router vs the best static assignment (and the others) at realised bits."""
    rows = {row["name"]: row for row in table.to_dict(orient="records")}

    def at(name: str) -> dict | None:
        return rows.get(name)

    per_budget = []
    for budget in budgets:
        router, exact, greedy, searched = (
            at(f"router_b{budget:g}"),
            at(f"static_exact_b{budget:g}"),
            at(f"static_greedy_b{budget:g}"),
            at(f"static_searched_b{budget:g}"),
        )
        randoms = [r for n, r in rows.items() if n.startswith(f"random_b{budget:g}_")]
        static_best = _best(exact, greedy, searched)
        half = _best(*(at(f"static_{k}_b{budget + 0.5:g}") for k in ("exact", "searched")))
        entry: dict[str, Any] = {
            "budget": budget,
            "router_perplexity": router["perplexity"] if router else None,
            "router_mean_bits": router["mean_bits"] if router else None,
            "router_bits_per_byte": router["bits_per_byte"] if router else None,
            "static_exact_perplexity": exact["perplexity"] if exact else None,
            "static_exact_mean_bits": exact["mean_bits"] if exact else None,
            "static_greedy_perplexity": greedy["perplexity"] if greedy else None,
            "static_searched_perplexity": searched["perplexity"] if searched else None,
            "static_searched_mean_bits": searched["mean_bits"] if searched else None,
            "best_static_perplexity": static_best["perplexity"] if static_best else None,
            "best_random_perplexity": min((r["perplexity"] for r in randoms), default=None),
            "static_half_bit_perplexity": half["perplexity"] if half else None,
        }
        if router:
            entry["router_bits_within_0.1"] = bool(abs(router["mean_bits"] - budget) <= 0.1)
        if router and static_best:
            entry["router_at_or_below_static"] = _at_or_below(router, static_best)
        gap = bool(static_best and half and static_best["perplexity"] > half["perplexity"])
        if router and gap:
            entry["gap_recovery"] = _recovery(router, static_best, half)
        tuned = at(f"budget_router_b{budget:g}")
        if tuned:
            entry["budget_router_perplexity"] = tuned["perplexity"]
            entry["budget_router_mean_bits"] = tuned["mean_bits"]
            if isinstance(tuned.get("selected"), str):
                entry["budget_router_selected"] = tuned["selected"]
            entry["budget_router_bits_within_0.1"] = bool(abs(tuned["mean_bits"] - budget) <= 0.1)
            if static_best:
                entry["budget_router_at_or_below_static"] = _at_or_below(tuned, static_best)
            if gap:
                entry["budget_router_gap_recovery"] = _recovery(tuned, static_best, half)
        per_budget.append(entry)
    recoveries = [e["gap_recovery"] for e in per_budget if e.get("gap_recovery") is not None]
    tuned_recoveries = [
        e["budget_router_gap_recovery"]
        for e in per_budget
        if e.get("budget_router_gap_recovery") is not None
    ]
    tuned_verdicts = [
        e["budget_router_at_or_below_static"]
        for e in per_budget
        if "budget_router_at_or_below_static" in e
    ]
    verdicts = [e.get("router_at_or_below_static") for e in per_budget]
    fp, lowest = at("fp"), at(f"uniform_{widths[0]}bit")
    headline = (
        {f"router_b{e['budget']:g}_perplexity": e["router_perplexity"] for e in per_budget}
        | {f"router_b{e['budget']:g}_mean_bits": e["router_mean_bits"] for e in per_budget}
        | {
            f"budget_router_b{e['budget']:g}_perplexity": e.get("budget_router_perplexity")
            for e in per_budget
        }
        | {
            f"budget_router_b{e['budget']:g}_mean_bits": e.get("budget_router_mean_bits")
            for e in per_budget
        }
        | {
            "router_flops_share": cost["router_flops_share_per_token"],
            "max_gap_recovery": max(recoveries) if recoveries else None,
            "budget_router_max_gap_recovery": max(tuned_recoveries) if tuned_recoveries else None,
        }
    )
    return {
        "per_budget": per_budget,
        "router_beats_static_at_every_budget": bool(verdicts) and all(v is True for v in verdicts),
        "max_gap_recovery": max(recoveries) if recoveries else None,
        "budget_router_beats_static_at_every_budget": (
            bool(tuned_verdicts) and all(tuned_verdicts) if tuned_verdicts else None
        ),
        "budget_router_max_gap_recovery": max(tuned_recoveries) if tuned_recoveries else None,
        "fp_perplexity": fp["perplexity"] if fp else None,
        "lowest_uniform_perplexity": lowest["perplexity"] if lowest else None,
        "router_cost": cost,
        "sensitivity": {"widths": widths, "per_layer": [list(map(float, r)) for r in sensitivity]},
        "headline": {k: v for k, v in headline.items() if v is not None and not _nan(v)},
        "definitions": {
            "mean_bits": "parameter-weighted mean weight width over the decoder blocks' quantized "
            "linears (scales not counted), realised on the evaluation data for the router",
            "best_static": "the lowest perplexity of the static allocations (exact, greedy, "
            "searched) at the budget",
            "gap_recovery": "(ppl best_static(b) - ppl router(b)) / (ppl best_static(b) - "
            "ppl best_static(b + 0.5)); at b + 0.5 the exact and searched allocations",
            "speed_kind": "packed: the router's choices on real int4 / int8 kernels (2-bit codes on "
            "the int4 kernel; weight-only), with evaluation.speed.packed; simulated: "
            "fake-quantized weights",
        },
    }


def _at_or_below(router: dict, static: dict) -> bool:
    """Router perplexity at or below the static one, at no more than +0.1 realised bits."""
    return bool(
        router["perplexity"] <= static["perplexity"]
        and router["mean_bits"] <= static["mean_bits"] + 0.1
    )


def _best(*rows: dict | None) -> dict | None:
    """The row of lowest perplexity among those present."""
    return min((r for r in rows if r), key=lambda r: r["perplexity"], default=None)


def _recovery(router: dict, static: dict, half: dict) -> float:
    """Share of the static gap between ``b`` and ``b + 0.5`` bits the router recovers."""
    gap = static["perplexity"] - half["perplexity"]
    return (static["perplexity"] - router["perplexity"]) / gap


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def pareto_figure(table: Any) -> Any:
    """Left: perplexity against mean bits, every method (full precision as a line). Right: the
    router's per-layer bit histogram at each budget (share of decisions at each width)."""
    import json

    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 4.5))
    axes, bars = figure.subplots(1, 2)
    for kind, (marker, colour) in KIND_STYLE.items():
        rows = table[table["kind"] == kind].sort_values("mean_bits")
        if rows.empty:
            continue
        if kind == "fp":
            axes.axhline(float(rows["perplexity"].iloc[0]), color=colour, ls=":", label="fp")
            continue
        line = "-" if kind in ("router", "static_exact", "uniform") else ""
        axes.plot(
            rows["mean_bits"], rows["perplexity"], marker=marker, ls=line, color=colour, label=kind
        )
    axes.set_xlabel("mean bits (parameter-weighted, realised)")
    axes.set_ylabel("perplexity")
    axes.set_yscale("log")
    axes.set_title("precision router vs static widths")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8)
    routers = table[table["kind"].isin(["router", "budget_router"])]
    offset = 0
    for _, row in routers.iterrows():
        histogram = json.loads(row["bit_histogram"])  # per layer {width: share}
        widths = sorted(histogram[0], key=float) if histogram else []
        bottom = [0.0] * len(histogram)
        positions = [offset + layer for layer in range(len(histogram))]
        for index, width in enumerate(widths):
            shares = [layer[width] for layer in histogram]
            colour = f"C{index}"
            label = f"{width} bits" if offset == 0 else None
            bars.bar(positions, shares, bottom=bottom, color=colour, label=label)
            bottom = [b + s for b, s in zip(bottom, shares, strict=True)]
        bars.text(offset + (len(histogram) - 1) / 2, 1.02, row["name"], ha="center", fontsize=7)
        offset += len(histogram) + 1
    bars.set_ylim(0, 1.1)
    bars.set_xlabel("decoder block, per router budget")
    bars.set_ylabel("share of decisions")
    bars.set_title("router: per-layer bit histogram")
    if not routers.empty:
        bars.legend(fontsize=7)
    return figure


def _log(results: dict) -> None:
    """The headline numbers as run metrics. Every method's row is in the evaluation table (an
    artifact of the run), not one metric per method: the house rule (architecture.md)."""
    from router_pipelines.tracking import log_metrics

    log_metrics({f"headline/{k}": float(v) for k, v in results["headline"].items()})
