"""Pipeline ``data_processing``: raw corpus to tokenizer and fixed-length token rows."""

from router_pipelines.pipelines.data_processing.pipeline import create_pipeline

__all__ = ["create_pipeline"]
