"""What the query-router family (seed 004) brings: prompts and examples, measured outcomes and
labels, the label-token loss, and the routing metrics (APGR, CPT, convex hull, calibration).

Names are imported on first use (``router_pipelines.lazy``), so the parameter parser can read
:class:`PromptConfig` and :class:`QueryConfig` without importing torch.
"""

from router_pipelines.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "LADDER_LM": "outcomes",
        "PromptConfig": "prompts",
        "QueryConfig": "outcomes",
        "RouterExamples": "prompts",
        "RoutingCurve": "routing",
        "Rung": "outcomes",
        "SEED_SYSTEM_INSTRUCTION": "prompts",
        "SEED_USER_TEMPLATE": "prompts",
        "add_labels": "outcomes",
        "add_question_text": "outcomes",
        "apgr": "routing",
        "calibrate_threshold": "routing",
        "check_scorable": "outcomes",
        "concat_messages": "prompts",
        "cpt": "routing",
        "cut_queries": "outcomes",
        "gap_labels": "outcomes",
        "expected_gaps": "routing",
        "hull_area": "routing",
        "label_gap_means": "routing",
        "lambda_choice": "routing",
        "lambda_curve": "routing",
        "lambda_for_budget": "routing",
        "ladder_choice": "routing",
        "ladder_curve": "routing",
        "ladder_oracle_curve": "routing",
        "make_router_loss": "loss",
        "oracle_scores": "routing",
        "quantile_edges": "outcomes",
        "random_scores": "routing",
        "read_seed_records": "prompts",
        "router_metrics": "routing",
        "router_prompt": "prompts",
        "routing_curve": "routing",
        "score_rungs": "outcomes",
        "seed_record_text": "prompts",
        "seed_split": "prompts",
        "strong_share": "routing",
        "upper_hull": "routing",
    },
)
