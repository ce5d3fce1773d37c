"""Wiring of the ``data_processing`` namespace: raw corpus to tokenizer and token blocks."""

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.data_processing.nodes import (
    ingest_corpus,
    split_corpus,
    tokenize_corpus,
)


def create_pipeline(**kwargs) -> Pipeline:
    """Its public outputs — ``tokenizer``, ``train_tokens``, ``validation_tokens`` — keep their
    names (every family reads them); the rest is ``data_processing.*``. It reads the ``data``
    parameter group."""
    return Pipeline(
        [
            Node(ingest_corpus, "params:data", "raw_corpus", name="ingest_corpus"),
            Node(split_corpus, ["raw_corpus", "params:data"], "corpus_split", name="split_corpus"),
            Node(
                tokenize_corpus,
                ["corpus_split", "params:data"],
                ["tokenizer", "train_tokens", "validation_tokens", "data_report"],
                name="tokenize_corpus",
            ),
        ],
        namespace="data_processing",
        outputs={"tokenizer", "train_tokens", "validation_tokens"},
        parameters={"params:data"},
    )
