"""Nodes of the ``switchable`` pipeline after training: bit-width sweep, Pareto fronts."""

from __future__ import annotations

import json
import logging
import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from router_pipelines.data.torch_dataset import TokenBlockDataset
from router_pipelines.evaluation.configs import build_configurations, evaluate_configurations
from router_pipelines.evaluation.pareto import pareto_front, plot_pareto
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.pipelines.switchable.config import parse_switchable_params
from router_pipelines.tracking import log_metrics

logger = logging.getLogger(__name__)

# The two trade-offs reported: quality against size, and quality against speed.
FRONTS = {
    "pareto_bits": {"perplexity": "min", "effective_bits": "min"},
    "pareto_speed": {"perplexity": "min", "tokens_per_s": "max"},
}


def evaluate_bit_configurations(
    switchable_model: ModelBundle, validation_tokens: pd.DataFrame, switchable_params: dict
) -> pd.DataFrame:
    """Perplexity, accuracy, effective bits, compression and speed of every configuration.

    Configurations come from ``switchable.experiment.evaluation``: uniform widths (and FP),
    named layer-wise mixes and K seeded random mixes; all are validated before the first one runs.
    """
    params = parse_switchable_params(switchable_params)
    model = switchable_model.model
    eval_config = params.experiment.evaluation
    configurations = build_configurations(
        eval_config, model.switchable_config.bit_widths, model.num_layers
    )
    table = evaluate_configurations(
        model, configurations, TokenBlockDataset(validation_tokens), eval_config
    )
    table["compression_ratio"] = table["compression_ratio_fp16"]
    _log_metrics(table)
    return table


def _log_metrics(table: pd.DataFrame) -> None:
    metrics = {}
    for _, row in table.iterrows():
        for key in ("perplexity", "token_accuracy", "effective_bits", "tokens_per_s"):
            value = row.get(key)
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                metrics[f"eval/{row['name']}/{key}"] = float(value)
    log_metrics(metrics)


def pareto_analysis(
    bit_configuration_results: pd.DataFrame,
) -> tuple[pd.DataFrame, Figure, dict[str, Any]]:
    """Non-dominated configurations over (perplexity, effective bits) and (perplexity, tokens/s).

    Returns:
        The Pareto table (every configuration on at least one front, with a boolean column per
        front), a two-panel plot, and the seed's ``switchable_precision_results`` document (every
        configuration's metrics plus the fronts).
    """
    table = bit_configuration_results.copy()
    for column, objectives in FRONTS.items():
        table[column] = pareto_front(table, objectives)
    on_a_front = table[list(FRONTS)].any(axis=1)
    pareto = table[on_a_front].sort_values("effective_bits").reset_index(drop=True)
    results = {
        "configurations": json.loads(table.to_json(orient="records")),
        "pareto_fronts": {column: table.loc[table[column], "name"].tolist() for column in FRONTS},
        "definitions": {
            "effective_bits": "parameter-weighted mean over quantized linear weights of "
            "(bits + 16 / in_features); full-precision layers count 16 bits; see docs/switchable.md",
            "compression_ratio": "16 / effective_bits (quantized linear layers only, vs FP16)",
            "tokens_per_s": "batch-1 decode tokens/s; speed_kind says packed kernel or simulated",
        },
    }
    return pareto, _plot_fronts(table), results


def _plot_fronts(table: pd.DataFrame) -> Figure:
    """Both fronts side by side: perplexity against effective bits and against tokens/s."""
    figure = Figure(figsize=(12, 4.5))
    for index, (column, objectives) in enumerate(FRONTS.items()):
        x = next(k for k in objectives if k != "perplexity")
        plot_pareto(
            table,
            x,
            "perplexity",
            table[column],
            f"perplexity vs {x}",
            axes=figure.add_subplot(1, 2, index + 1),
        )
    return figure
