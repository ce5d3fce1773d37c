"""Wiring of the ``memory`` namespace (seed 002): a Mixture-of-Chapters memory adapter on the
base LM, instruction-tuned on the chat corpus."""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.data_processing.nodes import ingest_corpus, split_corpus
from router_pipelines.pipelines.memory.nodes import (
    evaluate_memory,
    register_memory,
    rescore_memory,
    tokenize_chat_corpus,
    train_memory,
)
from router_pipelines.promotion import DATA_REPORT, promotion_node


def create_pipeline(**kwargs) -> Pipeline:
    """The ``memory`` namespace, starting from ``pretrain.model`` (the base LM and its tokenizer).

    The chat corpus (``memory.chat_data``, a ``data``-shaped group) is read, split and tokenized
    here with the base's tokenizer; ``validation_tokens`` (the text corpus) measures forgetting.
    The promotion node compares versions on the chat validation split, the data the rule's
    metric is measured on, so its held-out fingerprint comes from ``chat_data_report`` rather
    than ``data_processing.data_report`` (the text split).
    """
    nodes = [
        Node(ingest_corpus, "params:chat_data", "chat_corpus", name="ingest_chat_corpus"),
        Node(
            split_corpus,
            ["chat_corpus", "params:chat_data"],
            "chat_corpus_split",
            name="split_chat_corpus",
        ),
        Node(
            tokenize_chat_corpus,
            ["chat_corpus_split", "base_model", "params:chat_data"],
            ["chat_train_tokens", "chat_validation_tokens", "chat_data_report"],
            name="tokenize_chat_corpus",
        ),
        Node(
            train_memory,
            [
                "base_model",
                "chat_train_tokens",
                "chat_validation_tokens",
                "validation_tokens",
                "params:adapter",
                "params:lora",
                "params:training",
                "params:lr_finder",
            ],
            ["model", "training_summary", "loss_curve", "resolved_config"],
            name="train_memory",
        ),
        Node(
            evaluate_memory,
            [
                "model",
                "base_model",
                "validation_tokens",
                "chat_validation_tokens",
                "params:evaluation",
                "params:training",
            ],
            ["evaluation", "evaluation_summary", "chapter_usage"],
            name="evaluate_memory",
        ),
        Node(
            register_memory,
            ["model", "evaluation_summary", "training_summary", "params:register"],
            "registration",
            name="register_memory",
        ),
        # a champion measured on other chat data is scored again on this run's, as evaluated here
        Pipeline(
            [
                promotion_node(
                    "memory",
                    evaluate=rescore_memory,
                    inputs=[
                        "base_model",
                        "validation_tokens",
                        "chat_validation_tokens",
                        "params:evaluation",
                        "params:training",
                    ],
                )
            ],
            inputs={DATA_REPORT: "chat_data_report"},
        ),
    ]
    return Pipeline(
        nodes,
        namespace="memory",
        inputs={"base_model": "pretrain.model", "validation_tokens": "validation_tokens"},
        parameters={"params:promotion"},
    )
