"""Wiring of the ``query_router`` namespace (seed 004): route queries between cheap and strong."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.query_router.evaluation_nodes import (
    evaluate_router,
    register_router,
    rescore_router,
)
from router_pipelines.pipelines.query_router.nodes import (
    cut_router_queries,
    measure_outcomes,
    provide_ladder_lm,
    train_router,
)
from router_pipelines.promotion import DATA_REPORT, promotion_node


def create_pipeline(**kwargs) -> Pipeline:
    """The ``query_router`` namespace, reading ``switchable.model`` (the ladder's widths),
    ``pretrain.model`` (the router's base LM), the tokens and tokenizer (queries, and the
    ladder's model of another size, ``ladder_lm``), the saved routers and the registry
    (reuse) and the data report (promotion)."""
    nodes = [
        Node(
            cut_router_queries,
            ["validation_tokens", "params:queries"],
            "queries",
            name="cut_router_queries",
        ),
        Node(
            provide_ladder_lm,
            [
                "train_tokens",
                "validation_tokens",
                "tokenizer",
                "switchable_model",
                "saved_ladder_lms",
                "model_registry",
                "params:outcomes",
                "params:ladder_lm",
            ],
            ["ladder_lm", "ladder_lm_summary"],
            name="provide_ladder_lm",
        ),
        Node(
            measure_outcomes,
            ["queries", "switchable_model", "ladder_lm", "params:outcomes"],
            "outcomes",
            name="measure_outcomes",
        ),
        Node(
            train_router,
            [
                "outcomes",
                "base_model",
                "saved_models",
                "model_registry",
                "params:prompt",
                "params:router",
                "params:data",
                "params:training",
                "params:source",
            ],
            ["model", "training_summary", "loss_curve"],
            name="train_router",
        ),
        Node(
            evaluate_router,
            ["model", "outcomes", "params:prompt", "params:outcomes", "params:evaluation"],
            ["evaluation", "routing_plot", "routing_metrics"],
            name="evaluate_router",
        ),
        Node(
            register_router,
            [
                "model",
                "switchable_model",
                "ladder_lm",
                "routing_metrics",
                "training_summary",
                "params:register",
            ],
            "registration",
            name="register_router",
        ),
        # a champion measured on other held-out data is scored again on this run's test queries
        promotion_node(
            "query_router",
            evaluate=rescore_router,
            inputs=["outcomes", "params:outcomes", "params:evaluation"],
        ),
    ]
    return Pipeline(
        nodes,
        namespace="query_router",
        inputs={
            "switchable_model": "switchable.model",
            "base_model": "pretrain.model",
            "train_tokens": "train_tokens",
            "validation_tokens": "validation_tokens",
            "tokenizer": "tokenizer",
            "model_registry": "model_registry",
            DATA_REPORT: DATA_REPORT,
        },
        parameters={"params:promotion"},
    )
