"""Wiring of the ``depth_routing`` namespace (seed 003): MoD or DTF beside a dense baseline.

One pipeline, registered three times: ``depth_routing`` (``model_type`` from the parameters),
``mod`` and ``dtf`` (the type fixed). All three use the ``depth_routing`` parameters and
catalog namespace.
"""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.depth_routing.evaluation_nodes import (
    evaluate_depth_routing,
    register_depth_routing,
    rescore_depth_routing,
)
from router_pipelines.pipelines.depth_routing.nodes import train_dense_baseline, train_routed_model
from router_pipelines.promotion import DATA_REPORT, promotion_node

GROUPS = [
    "params:model_type",
    "params:mode",
    "params:model",
    "params:loss",
    "params:training",
    "params:dense_baseline",
    "params:evaluation",
    "params:register",
    "params:source",
]
DATA = ["train_tokens", "validation_tokens", "tokenizer"]
STORES = ["saved_models", "saved_best_models", "model_registry"]  # what reuse looks at


def create_pipeline(model_type: str | None = None, **kwargs) -> Pipeline:
    """The ``depth_routing`` namespace.

    Args:
        model_type: ``None``: ``depth_routing.model_type`` decides; ``"mod"`` / ``"dtf"``: fixed
            (the training node is then named ``train_mod_model`` / ``train_dtf_model``).
    """
    kind = model_type or "routed"
    nodes = [
        Node(
            _fixed(train_routed_model, model_type),
            [*DATA, *STORES, *GROUPS],
            [
                "model",
                "best_model",
                "training_summary",
                "loss_curve",
                "routing_curve",
                "resolved_config",
            ],
            name=f"train_{kind}_model",
        ),
        Node(
            _fixed(train_dense_baseline, model_type),
            [*DATA, "saved_dense_models", *GROUPS],
            ["dense_model", "dense_summary"],
            name="train_dense_baseline",
        ),
        Node(
            evaluate_depth_routing,
            [
                "best_model",
                "dense_model",
                "training_summary",
                "dense_summary",
                "validation_tokens",
                "params:evaluation",
            ],
            ["evaluation", "routing_report"],
            name="evaluate_depth_routing",
        ),
        Node(
            register_depth_routing,
            ["best_model", "training_summary", "routing_report", "params:register"],
            "registration",
            name="register_depth_routing",
        ),
        # a champion measured on other held-out data is scored again on this run's validation
        promotion_node(
            "depth_routing",
            evaluate=rescore_depth_routing,
            inputs=["validation_tokens", "tokenizer", "params:evaluation"],
        ),
    ]
    return Pipeline(
        nodes,
        namespace="depth_routing",
        inputs={"train_tokens", "validation_tokens", "tokenizer", "model_registry", DATA_REPORT},
        parameters={"params:promotion"},
    )


def _fixed(func, model_type: str | None):
    """``func`` with the pipeline's model type bound (named like ``func`` in Kedro's logs)."""
    return update_wrapper(partial(func, model_type=model_type), func)
