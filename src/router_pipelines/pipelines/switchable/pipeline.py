"""Wiring of the ``switchable`` pipeline (seed 001).

``create_pipeline()`` is the switchable part alone, reading ``base_model`` from upstream;
``create_base_pipeline()`` provides that base model (reused or trained) when the pipeline runs
on its own as ``kedro run --pipeline=switchable``.
"""

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.switchable.evaluation_nodes import (
    evaluate_bit_configurations,
    pareto_analysis,
)
from router_pipelines.pipelines.switchable.nodes import (
    provide_base_model,
    register_switchable,
    train_switchable,
)


def create_base_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=provide_base_model,
                inputs=[
                    "train_tokens",
                    "validation_tokens",
                    "tokenizer",
                    "latest_base_model",
                    "params:pretrain",
                    "params:switchable",
                ],
                outputs="base_model",
                name="provide_base_model",
            )
        ]
    )


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=train_switchable,
                inputs=["base_model", "train_tokens", "validation_tokens", "params:switchable"],
                outputs=[
                    "switchable_model",
                    "switchable_training_summary",
                    "switchable_loss_curve",
                ],
                name="train_switchable",
            ),
            Node(
                func=evaluate_bit_configurations,
                inputs=["switchable_model", "validation_tokens", "params:switchable"],
                outputs="bit_configuration_results",
                name="evaluate_bit_configurations",
            ),
            Node(
                func=pareto_analysis,
                inputs="bit_configuration_results",
                outputs=[
                    "switchable_pareto",
                    "switchable_pareto_plot",
                    "switchable_precision_results",
                ],
                name="pareto_analysis",
            ),
            Node(
                func=register_switchable,
                inputs=[
                    "switchable_model",
                    "switchable_pareto",
                    "switchable_training_summary",
                    "params:switchable",
                ],
                outputs="switchable_registration",
                name="register_switchable",
            ),
        ]
    )
