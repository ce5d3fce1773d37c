"""Wiring of the ``data_processing`` pipeline."""

from kedro.pipeline import Node, Pipeline

from router_pipelines.pipelines.data_processing.nodes import (
    ingest_corpus,
    split_corpus,
    tokenize_corpus,
)


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline(
        [
            Node(
                func=ingest_corpus,
                inputs=["params:raw_path", "params:data"],
                outputs="raw_records",
                name="ingest_corpus",
            ),
            Node(
                func=split_corpus,
                inputs=["raw_records", "params:data"],
                outputs=["train_records", "validation_records"],
                name="split_corpus",
            ),
            Node(
                func=tokenize_corpus,
                inputs=["train_records", "validation_records", "params:data"],
                outputs=["tokenizer", "train_tokens", "validation_tokens", "data_report"],
                name="tokenize_corpus",
            ),
        ]
    )
