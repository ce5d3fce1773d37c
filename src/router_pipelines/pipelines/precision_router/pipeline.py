"""Wiring of the ``precision_router`` namespace (seed 000): a router picking each layer's
bit width per input, trained on a frozen multi-precision model."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.precision_router.evaluation_nodes import (
    evaluate_router,
    rescore_precision_router,
)
from router_pipelines.pipelines.precision_router.nodes import (
    provide_multi_precision_model,
    quantize_base_model,
    register_router,
    train_router,
)
from router_pipelines.promotion import DATA_REPORT, promotion_node


def create_pipeline(
    with_switchable: bool = True, switchable_registered: bool = False, **kwargs
) -> Pipeline:
    """The ``precision_router`` namespace.

    Args:
        with_switchable: read the switchable model (``switchable.model``), the default
            multi-precision source; ``False`` builds the ``precision_router_ptq`` variant,
            which only quantizes (``quantized.source``: ptq or path) and needs no switchable
            training upstream.
        switchable_registered: the DAG also registers the switchable model
            (``switchable.registration``, e.g. after the trained switchable family in
            ``__default__``): registration then waits for it and references that version.
    """
    common = ["base_model", "tokenizer", "train_tokens", "params:quantized"]
    if with_switchable:
        provide = Node(
            provide_multi_precision_model,
            ["switchable_model", *common],
            "multi_precision_model",
            name="provide_multi_precision_model",
        )
    else:
        provide = Node(
            quantize_base_model, common, "multi_precision_model", name="quantize_base_model"
        )
    register_inputs = [
        "model",
        "router_results",
        "training_summary",
        "params:register",
        "params:switchable",
    ]
    if switchable_registered:
        register_inputs.append("switchable_registration")
    nodes = [
        provide,
        Node(
            train_router,
            [
                "multi_precision_model",
                "train_tokens",
                "validation_tokens",
                "params:router",
                "params:training",
                "params:evaluation",
            ],
            ["model", "training_summary", "loss_curve", "training_history"],
            name="train_router",
        ),
        Node(
            evaluate_router,
            ["model", "train_tokens", "validation_tokens", "params:training", "params:evaluation"],
            ["evaluation", "pareto_plot", "router_results"],
            name="evaluate_router",
        ),
        Node(
            register_router,
            register_inputs,
            "registration",
            name="register_router",
        ),
        promotion_node(
            "precision_router",
            evaluate=rescore_precision_router,
            inputs=[
                "train_tokens",
                "validation_tokens",
                "tokenizer",
                "params:training",
                "params:evaluation",
            ],
        ),
    ]
    inputs = {
        "base_model": "pretrain.model",
        "tokenizer": "tokenizer",
        "train_tokens": "train_tokens",
        "validation_tokens": "validation_tokens",
        DATA_REPORT: DATA_REPORT,
    }
    if with_switchable:
        inputs["switchable_model"] = "switchable.model"
    if switchable_registered:
        inputs["switchable_registration"] = "switchable.registration"
    return Pipeline(
        nodes, namespace="precision_router", inputs=inputs, parameters={"params:promotion"}
    )
