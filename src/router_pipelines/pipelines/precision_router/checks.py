"""Pre-run checks of the ``precision_router`` group (see validation.py).

The widths of the multi-precision model are known before anything runs: from
``switchable.model.bit_widths`` (a reused switchable model must have the same identity, so
the same widths), from ``quantized.bit_widths`` for ``ptq``, and from the folder's
``switchable_config.json`` for ``path``. ``num_examples`` against the data is checked by the
training node before it trains (the row count is known once the data is tokenized).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from router_pipelines.promotion import rule_problem
from router_pipelines.validation import RunParameters, path_problem, registry_problem


def check_precision_router(run: RunParameters) -> list[str]:
    params = run.parsed["precision_router"]
    problems = [
        path_problem(
            "precision_router.training.output_dir", params.training.output_dir, must_be="folder"
        )
    ]
    if "precision_router.switchable" in run.used_params:
        problems.append(
            registry_problem(run, "precision_router.switchable", params.switchable, "switchable_lm")
        )
    widths, problem = model_widths(params.quantized, run.parsed.get("switchable"))
    problems.append(problem)
    if widths is not None:
        problems.extend(_against_widths(params.training, widths))
    data = run.parsed.get("data")
    seq_len = params.training.seq_len
    if data is not None and seq_len is not None and seq_len > data.seq_len:
        problems.append(
            f"precision_router.training.seq_len: {seq_len} is longer than the data's rows "
            f"(data.seq_len {data.seq_len}); use at most {data.seq_len} or null"
        )
    reporter = f"the evaluation at precision_router.evaluation.budgets {params.evaluation.budgets}"
    problems.append(
        rule_problem(run, "precision_router", headline_keys(params.evaluation), reporter)
    )
    return [p for p in problems if p]


def headline_keys(evaluation: Any) -> list[str]:
    """The headline metrics ``evaluate_router`` always reports for these evaluation settings
    (the registration's metrics, which a promotion rule may name)."""
    keys = []
    kinds = ("router", "budget_router") if evaluation.budget_routers else ("router",)
    for kind in kinds:
        for budget in evaluation.budgets:
            keys += [f"{kind}_b{budget:g}_perplexity", f"{kind}_b{budget:g}_mean_bits"]
    # max_gap_recovery is left out: it is absent when no static gap exists to recover
    return [*keys, "router_flops_share"]


def model_widths(quantized: Any, switchable: Any) -> tuple[list[int] | None, str | None]:
    """The multi-precision model's widths, or a problem naming why it is not one."""
    if quantized.source == "ptq":
        return list(quantized.bit_widths), None
    if quantized.source == "switchable":
        if switchable is None:
            return None, None
        return sorted(switchable.model.bit_widths), None
    path = Path(quantized.model_path)
    config_file = path / "switchable_config.json"
    if not config_file.is_file():
        what = "does not exist" if not path.exists() else "has no switchable_config.json"
        return None, (
            f"precision_router.quantized.model_path: {str(path)!r} is not a multi-precision "
            f"model ({what}); give a folder saved by SwitchableLM.save_pretrained (e.g. "
            "data/06_models/switchable/<version>/switchable) or use quantized.source: ptq"
        )
    try:
        return sorted(json.loads(config_file.read_text())["bit_widths"]), None
    except (ValueError, KeyError, TypeError) as err:
        return None, f"precision_router.quantized.model_path: {config_file} does not parse: {err}"


def _against_widths(training: Any, widths: list[int]) -> list[str]:
    problems = []
    chosen = training.precisions or widths
    missing = [b for b in chosen if b not in widths]
    if missing:
        problems.append(
            f"precision_router.training.precisions: {missing} bits is not a width of the "
            f"multi-precision model; it has {widths}"
        )
    elif training.target_bits is not None and not chosen[0] <= training.target_bits <= chosen[-1]:
        problems.append(
            f"precision_router.training.target_bits: {training.target_bits} is outside the "
            f"model's range; use a value from {chosen[0]} to {chosen[-1]} bits"
        )
    return problems
