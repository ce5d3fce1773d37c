"""Nodes of the ``query_router`` namespace after training: routing evaluation and registration."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np

from router_pipelines.pipelines.common import registration_skipped
from router_pipelines.pipelines.query_router.config import (
    HEADLINE_METRICS,
    LADDER_LM,
    parse_query_router_params,
)
from router_pipelines.pipelines.query_router.nodes import FAMILY, ladder_lm_bundle, ladder_names

logger = logging.getLogger(__name__)

# `prompt_gap` is a reference, not a router one would deploy: it runs the cheap and the strong
# model on the prompt (the cost routing saves) and routes by how much better the strong one
# predicts it. It shows how much of the reference gap the models' own view of a query predicts.
BASELINES = ("router", "random", "oracle", "uncertainty", "prompt_gap")


def router_score_table(router_model: Any, outcomes: Any, prompt: Any, batch_size: int) -> Any:
    """P(score = s) of every rung below the strongest for every query: columns
    ``p<s>_<rung>`` and ``p_good_<rung>`` (= P(score >= 4)); ``p_strong`` for the cheapest rung."""
    from router_pipelines.families.query_router import router_prompt
    from router_pipelines.models.query_router import GOOD_ENOUGH, predict_scores

    rungs = ladder_names(outcomes)
    with_model = len(rungs) > 2
    table = outcomes[["query_id", "split"]].copy()
    for name in rungs[:-1]:
        prompts = [
            router_prompt(q, prompt, name if with_model else None) for q in outcomes["question"]
        ]
        dist = predict_scores(
            router_model.model, router_model.tokenizer, prompts, batch_size=batch_size
        ).numpy()
        for score in range(1, 6):
            table[f"p{score}_{name}"] = dist[:, score - 1]
        table[f"p_good_{name}"] = dist[:, GOOD_ENOUGH - 1 :].sum(axis=1)
    table["p_strong"] = 1.0 - table[f"p_good_{rungs[0]}"]
    return table


def evaluate_router(
    router_model: Any,
    outcomes: Any,
    prompt_params: dict[str, Any],
    outcomes_params: dict[str, Any],
    evaluation_params: dict[str, Any],
) -> tuple[Any, Any, dict[str, Any]]:
    """Threshold sweeps on the held-out test queries for the trained router, a random router,
    the exact oracle, the cheap model's own uncertainty and the prompt-gap reference (both
    models' loss on the prompt, :data:`BASELINES`); calibrated thresholds; the ladder.
    The finite metrics and the curve table are logged to MLflow.

    Returns:
        The curve table (one row per router and threshold: strong share or cost, quality, PGR),
        the figure of the curves, and the metrics document (APGR, CPT, hull area per router,
        calibration, the ladder's areas, the calibration scores the serving router uses).
    """
    from router_pipelines.tracking import log_metrics, log_table

    params = parse_query_router_params(
        {"prompt": prompt_params, "outcomes": outcomes_params, "evaluation": evaluation_params}
    )
    table, document = routing_evaluation(router_model, outcomes, params)
    metrics = document["metrics"]
    log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
    log_table(table, "routing_curves.json")
    logger.info(
        "Router APGR %.3f (oracle %.3f, random %.3f), CPT(50%%) %.3f",
        metrics["router_apgr"],
        metrics["oracle_apgr"],
        metrics["random_apgr"],
        metrics["router_cpt_50"],
    )
    return table, routing_figure(table), document


def rescore_router(
    bundle: Any,
    outcomes: Any,
    outcomes_params: dict[str, Any],
    evaluation_params: dict[str, Any],
) -> dict[str, float]:
    """The headline metrics of a registered router (the champion, in promotion) on this run's
    held-out queries: the test split of ``outcomes`` (its questions and the measured quality
    of the cheap and strong models on them), by the evaluation of :func:`evaluate_router` with
    the router's own prompt (the one it was trained on and is served with); nothing is logged.

    The router reads text in its own tokenizer (its base LM's, plus the label tokens), so there
    is no token-id check against the data's tokenizer.

    Raises:
        ValueError: the bundle is not a query router, lacks its prompt or ladder metadata, or
            was trained to score another ladder of models than this run's outcomes measure.
    """
    metadata = bundle.metadata
    if bundle.family != FAMILY:
        raise ValueError(f"the router to re-score: family {bundle.family!r}, not {FAMILY!r}")
    missing = [key for key in ("prompt", "ladder") if key not in metadata]
    if missing:
        raise ValueError(f"the router to re-score: its metadata has no {missing}")
    ladder = ladder_names(outcomes)
    if list(metadata["ladder"]) != ladder:
        raise ValueError(
            f"the router to re-score was trained to score the ladder {metadata['ladder']}, "
            f"not this run's {ladder} (query_router.outcomes.ladder): its scores would "
            "predict other models"
        )
    params = parse_query_router_params(
        {
            "prompt": metadata["prompt"],
            "outcomes": outcomes_params,
            "evaluation": evaluation_params,
        }
    )
    _, document = routing_evaluation(bundle, outcomes, params)
    return headline_metrics(document["metrics"])


def headline_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """:data:`HEADLINE_METRICS` of the metrics document: what the registration reports."""
    return {key: float(metrics[key]) for key in HEADLINE_METRICS}


def routing_evaluation(router_model: Any, outcomes: Any, params: Any) -> tuple[Any, dict[str, Any]]:
    """The curve table and the metrics document of :func:`evaluate_router` for the router
    bundle ``router_model`` on ``outcomes`` (``params``: parsed ``query_router`` params with
    ``prompt``, ``outcomes`` and ``evaluation``); logs nothing."""
    from router_pipelines.families.query_router import (
        calibrate_threshold,
        oracle_scores,
        random_scores,
        router_metrics,
        routing_curve,
        strong_share,
    )

    config = params.evaluation
    scores = router_score_table(router_model, outcomes, params.prompt, config.batch_size)
    test = (outcomes["split"] == "test").to_numpy()
    calibration = (outcomes["split"] == "calibration").to_numpy()
    cheap = outcomes["cheap_quality"].to_numpy()[test]
    strong = outcomes["strong_quality"].to_numpy()[test]
    router_scores = {
        "router": scores["p_strong"].to_numpy()[test],
        "random": random_scores(int(test.sum()), config.random_seed),
        "oracle": oracle_scores(cheap, strong),
        "uncertainty": outcomes["prompt_loss"].to_numpy()[test],
        "prompt_gap": outcomes["cheap_prompt_loss"].to_numpy()[test]
        - outcomes["strong_prompt_loss"].to_numpy()[test],
    }
    rows, metrics = [], {}
    for name, values in router_scores.items():
        curve = routing_curve(values, cheap, strong)
        for k in range(len(curve.strong_share)):
            rows.append(
                {
                    "router": name,
                    "threshold": float(curve.threshold[k]),
                    "strong_share": float(curve.strong_share[k]),
                    "cost": float(curve.strong_share[k]),
                    "quality": float(curve.quality[k]),
                    "pgr": float(curve.pgr[k]),
                }
            )
        for key, value in router_metrics(curve, config.cpt_targets).items():
            metrics[f"{name}_{key}"] = value
    calibration_scores = scores["p_strong"].to_numpy()[calibration]
    thresholds = {}
    for target in config.target_shares:
        threshold = calibrate_threshold(calibration_scores, target)
        key = f"{round(target * 100)}"
        thresholds[key] = threshold
        metrics[f"calibration_target_{key}_test_share"] = strong_share(
            router_scores["router"], threshold
        )
    metrics.update(
        test_queries=int(test.sum()),
        always_cheap_quality=float(cheap.mean()),
        always_strong_quality=float(strong.mean()),
        label_accuracy_test=float(
            (
                _argmax_label(scores, ladder_names(outcomes)[0])[test] == outcomes["label"][test]
            ).mean()
        ),
    )
    if strong.mean() <= cheap.mean():
        logger.warning(
            "On the test queries the strong model (%.4f) is not better than the cheap one "
            "(%.4f): PGR, APGR and CPT are normalised by a gap that is not positive and do "
            "not mean what they usually do",
            strong.mean(),
            cheap.mean(),
        )
    ladder_rows, ladder_metrics, ladder_rule = _ladder(outcomes, scores, test, params)
    rows.extend(ladder_rows)
    metrics.update(ladder_metrics)
    import pandas as pd

    document = {
        "metrics": metrics,
        "thresholds": thresholds,
        "serving_target_share": config.serving_target_share,
        "serving_threshold": calibrate_threshold(calibration_scores, config.serving_target_share),
        "calibration_p_strong": [float(v) for v in calibration_scores],
        "ladder": ladder_names(outcomes),
        "label_edges": [float(v) for v in outcomes["label_edges"].iloc[0]],
        "cost": params.outcomes.cost,
        "ladder_rule": ladder_rule,  # the lambda x cost rule over the ladder (empty: 2 models)
    }
    return pd.DataFrame(rows), document


def _argmax_label(scores: Any, rung: str) -> np.ndarray:
    columns = [f"p{s}_{rung}" for s in range(1, 6)]
    return scores[columns].to_numpy().argmax(axis=1) + 1


def _ladder(outcomes: Any, scores: Any, test: np.ndarray, params: Any) -> tuple[list, dict, dict]:
    """Over the ladder, on the test queries: the cheapest rung predicted good enough (a sweep
    of ``tau``), the trained router's quality - lambda x cost rule (a sweep of lambda) and the
    exact Lagrangian oracle. Returns curve rows, metrics and the lambda rule for serving."""
    from router_pipelines.families.query_router import (
        expected_gaps,
        hull_area,
        label_gap_means,
        ladder_curve,
        ladder_oracle_curve,
        lambda_curve,
        lambda_for_budget,
    )

    rungs = ladder_names(outcomes)
    if len(rungs) <= 2:
        return [], {}, {}
    kind = params.outcomes.cost
    quality = np.stack([outcomes[f"quality_{r}"].to_numpy()[test] for r in rungs], axis=1)
    cost = np.stack([outcomes[f"{kind}_{r}"].to_numpy()[test] for r in rungs], axis=1)
    p_good = np.stack([scores[f"p_good_{r}"].to_numpy()[test] for r in rungs[:-1]], axis=1)
    distributions = np.stack(
        [scores[[f"p{s}_{r}" for s in range(1, 6)]].to_numpy() for r in rungs[:-1]], axis=1
    )  # (N, R-1, 5) for every query
    train = (outcomes["split"] == "train").to_numpy()
    calibration = (outcomes["split"] == "calibration").to_numpy()
    gap_means = label_gap_means(
        np.concatenate([outcomes[f"gap_{r}"].to_numpy()[train] for r in rungs[:-1]]),
        np.concatenate([outcomes[f"label_{r}"].to_numpy()[train] for r in rungs[:-1]]),
    )
    # The cost the rule knows before answering: each rung's mean measured cost on the
    # training split (the test queries' own costs are what the curve then realises).
    rung_cost = np.array([outcomes[f"{kind}_{r}"].to_numpy()[train].mean() for r in rungs])
    predicted_gap = expected_gaps(distributions, gap_means)  # (N, R)
    taus = np.linspace(0.0, 1.0, params.evaluation.ladder_taus)
    taus[-1] = 1.0 + 1e-9  # the last point: always the strongest rung
    span = float(cost.mean(axis=0).max() - cost.mean(axis=0).min()) or 1.0  # lambda's scale
    lambdas = np.concatenate([[0.0], np.geomspace(1e-6, 1e3, 40) / span, [np.inf]])
    gap_scale = float(np.ptp(gap_means)) or 1.0
    rule_lambdas = np.concatenate([[0.0], np.geomspace(1e-3, 1e3, 41) * gap_scale / span])
    curves = {
        "ladder_router": ladder_curve(p_good, quality, cost, taus),
        "ladder_router_lambda": lambda_curve(
            predicted_gap[test], rung_cost, quality, cost, rule_lambdas
        ),
        "ladder_oracle": ladder_oracle_curve(quality, np.nan_to_num(cost), lambdas[:-1]),
    }
    # The cheapest points (lambda -> infinity) are the always-cheapest rung.
    for name in ("ladder_router_lambda", "ladder_oracle"):
        curves[name] = np.vstack([curves[name], [cost[:, 0].mean(), quality[:, 0].mean()]])
    # Areas in normalised units: cost 0 = the cheapest rung, 1 = the strongest; quality as PGR
    # between the cheapest rung (0) and the strongest (1), like APGR for two models.
    c0, c1 = float(cost[:, 0].mean()), float(cost[:, -1].mean())
    q0, q1 = float(quality[:, 0].mean()), float(quality[:, -1].mean())
    rows, metrics = [], {}
    for name, points in curves.items():
        for c, q in points:
            rows.append({"router": name, "cost": float(c), "quality": float(q)})
        xs = (np.append(points[:, 0], c0) - c0) / ((c1 - c0) or 1.0)
        ys = (np.append(points[:, 1], q0) - q0) / ((q1 - q0) or 1.0)
        metrics[f"{name}_hull_area"] = hull_area(xs, ys)
    for index, rung in enumerate(rungs):
        metrics[f"ladder_{rung}_cost"] = float(cost[:, index].mean())
        metrics[f"ladder_{rung}_quality"] = float(quality[:, index].mean())
    budget = rung_cost[0] + params.evaluation.serving_target_share * (rung_cost[-1] - rung_cost[0])
    serving_lambda = lambda_for_budget(predicted_gap[calibration], rung_cost, budget, rule_lambdas)
    rule = {
        "gap_means": [float(v) for v in gap_means],
        "rung_costs": [float(v) for v in rung_cost],
        "cost": kind,
        "serving_lambda": float(serving_lambda),
        "lambdas": [float(v) for v in rule_lambdas],
    }
    return rows, metrics, rule


def routing_figure(table: Any) -> Any:
    """Quality against strong share (two models) and against cost (the ladder, if any)."""
    from matplotlib.figure import Figure

    ladder = table[table["router"].str.startswith("ladder")]
    figure = Figure(figsize=(11 if len(ladder) else 6, 4.2))
    axes = figure.subplots(1, 2 if len(ladder) else 1, squeeze=False)[0]
    for name in BASELINES:
        rows = table[table["router"] == name]
        axes[0].plot(rows["strong_share"], rows["quality"], marker=".", label=name)
    axes[0].set(xlabel="strong-model share", ylabel="mean quality (−loss per reference token)")
    axes[0].set_title("Two models: threshold sweep (held-out)")
    axes[0].legend()
    if len(ladder):
        labels = {
            "ladder_router": "router: cheapest rung with P(good) >= tau",
            "ladder_router_lambda": "router: max predicted quality - lambda x cost",
            "ladder_oracle": "oracle: max quality - lambda x cost",
        }
        for name, label in labels.items():
            rows = ladder[ladder["router"] == name].sort_values("cost")
            axes[1].plot(rows["cost"], rows["quality"], marker=".", label=label)
        axes[1].set(xlabel="mean measured cost per query", ylabel="mean quality")
        axes[1].set_title("Ladder of models (held-out)")
        axes[1].legend()
    figure.tight_layout()
    return figure


def register_router(
    router_model: Any,
    switchable_model: Any,
    ladder_lm: Any,
    routing_metrics: dict[str, Any],
    training_summary: dict[str, Any],
    register_params: dict[str, Any],
) -> dict[str, Any]:
    """Register the router as ``query_router`` and the routed LM as ``routed_lm`` (router +
    switchable model, + the ladder LM when the ladder has it), each with the routing document
    and the headline metrics as tags."""
    import tempfile
    from pathlib import Path

    from router_pipelines.model_source import FINGERPRINT_TAG
    from router_pipelines.models.bundle import save_bundle
    from router_pipelines.serving import register_model

    config = parse_query_router_params({"register": register_params}).register
    skipped = registration_skipped(config, training_summary)
    if skipped is not None:
        return skipped
    metrics = routing_metrics["metrics"]
    headline = headline_metrics(metrics)
    tags = {FINGERPRINT_TAG: training_summary["fingerprint"]}
    with tempfile.TemporaryDirectory(prefix="router-") as tmp:
        routing = Path(tmp) / "routing.json"
        routing.write_text(json.dumps(routing_metrics, indent=2, default=float))
        router_info = register_model(
            router_model,
            config.name,
            wrapper=FAMILY,
            tags=tags,
            description=config.description,
            extra_artifacts={"routing": str(routing)},
            # linked to the router's logged model and set as its version tags
            metrics=headline,
            step=training_summary.get("global_step"),
        )
        router_dir = Path(tmp) / "router"
        save_bundle(router_model, router_dir)
        artifacts = {"routing": str(routing), "router": str(router_dir)}
        if LADDER_LM in routing_metrics["ladder"]:
            save_bundle(
                ladder_lm_bundle(ladder_lm, routing_metrics["ladder"]), Path(tmp) / LADDER_LM
            )
            artifacts[LADDER_LM] = str(Path(tmp) / LADDER_LM)
        routed_info = register_model(
            switchable_model,
            config.routed_name,
            wrapper="routed_lm",
            tags={**tags, **headline},  # the router's metrics, already linked to the router
            description=config.description,
            extra_artifacts=artifacts,
        )
    return {
        "registered": True,
        **router_info,
        "metrics": headline,
        "routed_lm": routed_info,
        # promoted with the router: routed_lm@champion serves the champion router's parts
        "companions": [{"name": routed_info["name"], "version": routed_info["version"]}],
    }
