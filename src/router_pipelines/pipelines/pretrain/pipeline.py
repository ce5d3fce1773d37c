"""Wiring of the ``pretrain`` pipeline."""

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.pretrain.nodes import register_base_model, train_base_model


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=train_base_model,
                inputs=["train_tokens", "validation_tokens", "tokenizer", "params:pretrain"],
                outputs=[
                    "base_model",
                    "pretrain_summary",
                    "pretrain_loss_curve",
                    "pretrain_resolved_config",
                ],
                name="train_base_model",
            ),
            Node(
                func=register_base_model,
                inputs=["base_model", "pretrain_summary", "params:pretrain"],
                outputs="base_model_registration",
                name="register_base_model",
            ),
        ]
    )
