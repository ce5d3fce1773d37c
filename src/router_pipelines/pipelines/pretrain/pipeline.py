"""Wiring of the ``pretrain`` namespace: the base causal LM every family starts from."""

from __future__ import annotations

from functools import partial, update_wrapper

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.pretrain.nodes import (
    register_base_model,
    rescore_base_model,
    train_base_model,
)
from router_pipelines.promotion import DATA_REPORT, promotion_node

PARAMETERS = ["params:model", "params:training", "params:lr_finder", "params:register"]


def create_pipeline(source: str | None = None, **kwargs) -> Pipeline:
    """The ``pretrain`` namespace.

    Args:
        source: ``None``: always train (``kedro run --pipeline=pretrain``, the default run).
            Else the parameter key of a ``ModelSourceConfig`` that decides whether a saved or
            registered base model is reused (e.g. ``"switchable.base"`` when the switchable
            pipeline runs on its own); the node is then named ``provide_base_model``.
    """
    inputs = ["train_tokens", "validation_tokens", "tokenizer", "saved_models", "model_registry"]
    if source is None:
        provide = Node(
            func=train_base_model,
            inputs=[*inputs, *PARAMETERS],
            outputs=["model", "training_summary", "loss_curve", "resolved_config"],
            name="train_base_model",
        )
    else:
        provide = Node(
            # update_wrapper: the node keeps the function's name (Kedro warns without one)
            func=update_wrapper(partial(train_base_model, source_key=source), train_base_model),
            inputs=[*inputs, *PARAMETERS, f"params:{source}"],
            outputs=["model", "training_summary", "loss_curve", "resolved_config"],
            name="provide_base_model",
        )
    register = Node(
        func=register_base_model,
        inputs=["model", "training_summary", "params:register"],
        outputs="registration",
        name="register_base_model",
    )
    return Pipeline(
        [
            provide,
            register,
            # a champion measured on other held-out data is scored again on this run's
            promotion_node(
                "pretrain",
                evaluate=rescore_base_model,
                inputs=["validation_tokens", "tokenizer", "params:training"],
            ),
        ],
        namespace="pretrain",
        inputs={"train_tokens", "validation_tokens", "tokenizer", "model_registry", DATA_REPORT},
        parameters={"params:promotion"} | (set() if source is None else {f"params:{source}"}),
    )
