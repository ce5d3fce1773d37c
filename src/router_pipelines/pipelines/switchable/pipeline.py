"""Wiring of the ``switchable`` namespace (seed 001): one model that runs at 2, 4 or 8 bits."""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.switchable.evaluation_nodes import (
    evaluate_bit_configurations,
    pareto_analysis,
    rescore_switchable,
)
from router_pipelines.pipelines.switchable.nodes import register_switchable, train_switchable
from router_pipelines.promotion import DATA_REPORT, promotion_node

PARAMETERS = [
    "params:model",
    "params:quantization",
    "params:training",
    "params:experiment.register",
]


def create_pipeline(source: str | None = None, **kwargs) -> Pipeline:
    """The ``switchable`` namespace, starting from ``pretrain.model`` (the base LM).

    Args:
        source: ``None``: always train. Else the parameter key of a ``ModelSourceConfig``
            (for a family that needs a switchable model, e.g. a router) deciding whether a
            compatible saved or registered switchable model is reused; the node is then named
            ``provide_switchable_model``.
    """
    inputs = ["base_model", "train_tokens", "validation_tokens", "saved_models", "model_registry"]
    outputs = ["model", "training_summary", "loss_curve"]
    if source is None:
        provide = Node(train_switchable, [*inputs, *PARAMETERS], outputs, name="train_switchable")
    else:
        provide = Node(
            # update_wrapper: the node keeps the function's name (Kedro warns without one)
            update_wrapper(partial(train_switchable, source_key=source), train_switchable),
            [*inputs, *PARAMETERS, f"params:{source}"],
            outputs,
            name="provide_switchable_model",
        )
    nodes = [
        provide,
        Node(
            evaluate_bit_configurations,
            ["model", "validation_tokens", "params:experiment.evaluation"],
            "evaluation",
            name="evaluate_bit_configurations",
        ),
        Node(
            pareto_analysis,
            "evaluation",
            ["pareto", "pareto_plot", "precision_results"],
            name="pareto_analysis",
        ),
        Node(
            register_switchable,
            ["model", "pareto", "training_summary", "params:experiment.register", "evaluation"],
            "registration",
            name="register_switchable",
        ),
        # a champion measured on other held-out data is scored again on this run's
        promotion_node(
            "switchable",
            evaluate=rescore_switchable,
            inputs=["validation_tokens", "tokenizer", "params:experiment.evaluation"],
        ),
    ]
    return Pipeline(
        nodes,
        namespace="switchable",
        inputs={
            "base_model": "pretrain.model",
            "train_tokens": "train_tokens",
            "validation_tokens": "validation_tokens",
            "tokenizer": "tokenizer",
            "model_registry": "model_registry",
            DATA_REPORT: DATA_REPORT,
        },
        parameters={"params:promotion"} | (set() if source is None else {f"params:{source}"}),
    )
