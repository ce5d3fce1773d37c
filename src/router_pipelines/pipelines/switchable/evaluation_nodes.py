"""Nodes of the ``switchable`` namespace after training: bit-width sweep and Pareto fronts."""

from __future__ import annotations

import json
import math
from typing import Any

# The two trade-offs reported: quality against size, and quality against speed.
FRONTS = {
    "pareto_bits": {"perplexity": "min", "effective_bits": "min"},
    "pareto_speed": {"perplexity": "min", "tokens_per_s": "max"},
}


def evaluate_bit_configurations(
    switchable_model: Any, validation_tokens: Any, evaluation_params: dict
) -> Any:
    """Perplexity, bits per byte, accuracy, effective bits, compression and speed of every
    bit configuration in ``switchable.experiment.evaluation`` (uniform widths and FP, named
    layer-wise mixes, K seeded random mixes), all validated before the first one runs."""
    eval_config = _eval_config(evaluation_params)
    table = _evaluate(
        switchable_model.model, validation_tokens, switchable_model.tokenizer, eval_config
    )
    table["compression_ratio"] = table["compression_ratio_fp16"]
    _log_metrics(table)
    return table


def rescore_switchable(
    bundle: Any, validation_tokens: Any, tokenizer: Any, evaluation_params: dict
) -> dict[str, float]:
    """The headline metrics of a registered switchable model (the champion, in promotion) on
    this run's validation split: the configured uniform widths only (the headline needs no
    mixes and no speed), evaluated as :func:`evaluate_bit_configurations` does; nothing is
    logged. A width the champion was not trained at raises ``ValueError``."""
    import dataclasses

    from router_pipelines.promotion import check_same_tokenizer

    check_same_tokenizer(bundle, tokenizer, "the switchable model to re-score")
    eval_config = _eval_config(evaluation_params)
    eval_config = dataclasses.replace(
        eval_config,
        layer_wise={},
        random_mixes=0,
        speed=dataclasses.replace(eval_config.speed, enabled=False),
    )
    return headline_metrics(_evaluate(bundle.model, validation_tokens, tokenizer, eval_config))


def _eval_config(evaluation_params: dict) -> Any:
    from router_pipelines.config import config_from_dict
    from router_pipelines.families.switchable import BitEvalConfig

    return config_from_dict(BitEvalConfig, evaluation_params, "switchable.experiment.evaluation")


def _evaluate(model: Any, validation_tokens: Any, tokenizer: Any, eval_config: Any) -> Any:
    """The sweep table of ``eval_config``'s settings on ``validation_tokens``."""
    from router_pipelines.data.tokenizer import token_byte_lengths
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.evaluation import evaluate_settings
    from router_pipelines.families.switchable import build_bit_settings

    return evaluate_settings(
        model,
        build_bit_settings(eval_config, model),
        TokenBlockDataset(validation_tokens),
        eval_config,
        token_bytes=token_byte_lengths(tokenizer),
    )


def _log_metrics(table: Any) -> None:
    """The whole table as one MLflow table (``switchable/evaluation_table.json``, shown as a
    table in the run's artifacts and comparable across runs) and only the headline numbers as
    metrics: one metric per configuration and column would bury the training curves."""
    from router_pipelines.tracking import log_metrics, log_table

    log_table(table.drop(columns=["layer_config"], errors="ignore"), "evaluation_table.json")
    log_metrics(headline_metrics(table))


def headline_metrics(table: Any) -> dict[str, float]:
    """``<width>_perplexity`` of every uniform configuration (``uniform_2bit_perplexity``,
    ``fp_perplexity``) and ``lowest_width_{perplexity,bits_per_byte,effective_bits}`` of the
    lowest uniform width: the family's promotion metric and its cost."""
    uniform = table[table["kind"] == "uniform"]
    metrics = {}
    quantized = uniform[uniform["bits"].notna()]
    if len(quantized):
        lowest = quantized.loc[quantized["bits"].idxmin()]
        for key in ("perplexity", "bits_per_byte", "effective_bits"):
            if _finite(lowest[key]):
                metrics[f"lowest_width_{key}"] = float(lowest[key])
    for _, row in uniform.iterrows():
        if _finite(row["perplexity"]):
            metrics[f"{row['name']}_perplexity"] = float(row["perplexity"])
    return metrics


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def pareto_analysis(evaluation: Any) -> tuple[Any, Any, dict[str, Any]]:
    """Non-dominated configurations over (perplexity, effective bits) and (perplexity, tokens/s).

    Returns:
        The Pareto table (every configuration on at least one front, with a boolean column per
        front), a two-panel plot, and the seed's ``switchable_precision_results`` document (every
        configuration's metrics plus the fronts).
    """
    from router_pipelines.evaluation.pareto import pareto_front, plot_fronts

    table = evaluation.copy()
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
            "bits_per_byte": "validation NLL in bits per UTF-8 byte of the predicted text",
            "tokens_per_s": "batch-1 decode tokens/s; speed_kind says packed kernel or simulated",
        },
    }
    title = "switchable: every bit configuration, Pareto fronts of quality against size and speed"
    return pareto, plot_fronts(table, FRONTS, title=title), results
