"""Pre-run checks of the ``query_router`` group against the other groups (see validation.py).

What is known before any model exists: the ladder LM's checkpoint folder and positions against
``data.seq_len`` (when the ladder names ``ladder_lm``; its size against the widths is checked on a weightless build in its
node, before training), the ladder against the switchable widths
(``switchable.model.bit_widths``), the query windows against ``data.seq_len``, the seed JSONL
(read and checked whole: it is small), the checkpoint folder and a registry version that must
exist, and the promotion rule's metrics. A prompt longer than the router's positions is only known once the tokenizer exists;
the training node refuses it before the first step.
"""

from __future__ import annotations

from router_pipelines.promotion import rule_problem
from router_pipelines.validation import (
    RunParameters,
    log_precision,
    path_problem,
    registry_problem,
)


def check_query_router(run: RunParameters) -> list[str]:
    params = run.parsed["query_router"]
    problems = [
        path_problem(
            "query_router.training.output_dir", params.training.output_dir, must_be="folder"
        )
    ]
    log_precision("query_router.training", params.training)
    from router_pipelines.pipelines.query_router.config import LADDER_LM

    if LADDER_LM in params.outcomes.ladder:
        problems.append(
            path_problem(
                "query_router.ladder_lm.training.output_dir",
                params.ladder_lm.training.output_dir,
                must_be="folder",
            )
        )
        log_precision("query_router.ladder_lm.training", params.ladder_lm.training)
        from router_pipelines.pipelines.pretrain.checks import model_positions

        positions, _ = model_positions(params.ladder_lm.model)
        data = run.parsed.get("data")
        if data is not None and positions is not None and data.seq_len > positions:
            problems.append(
                f"data.seq_len: {data.seq_len} exceeds the {positions} positions of the ladder LM; "
                "raise query_router.ladder_lm.model.max_positions"
            )
    if "query_router.switchable" in run.used_params:
        problems.append(
            registry_problem(run, "query_router.switchable", params.switchable, "switchable_lm")
        )
    switchable = run.parsed.get("switchable")
    if switchable is not None:
        from router_pipelines.pipelines.query_router.config import resolve_ladder

        try:
            resolve_ladder(params.outcomes.ladder, list(switchable.model.bit_widths))
        except ValueError as err:
            problems.append(f"{err} (switchable.model.bit_widths)")
    data = run.parsed.get("data")
    window = params.queries.prompt_tokens + params.queries.reference_tokens
    if data is not None and window > data.seq_len:
        problems.append(
            f"query_router.queries.prompt_tokens + reference_tokens: {window} exceeds "
            f"data.seq_len {data.seq_len}; a query must fit in one validation block"
        )
    if "query_router.source" in run.used_params:
        problems.append(registry_problem(run, "query_router.source", params.source, "query_router"))
    problems.append(_seed_jsonl_problem(params.data))
    from router_pipelines.pipelines.query_router.config import HEADLINE_METRICS

    problems.append(rule_problem(run, "query_router", HEADLINE_METRICS, "register_router"))
    return [problem for problem in problems if problem]


def _seed_jsonl_problem(data) -> str | None:
    if not data.jsonl_path:
        return None
    missing = path_problem("query_router.data.jsonl_path", data.jsonl_path, must_be="file")
    if missing:
        return missing
    from router_pipelines.families.query_router import read_seed_records

    try:
        read_seed_records(data.jsonl_path, data.n_sample, data.random_state)
    except ValueError as err:
        return f"query_router.data: {err}"
    return None
