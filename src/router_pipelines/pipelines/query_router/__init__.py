"""The ``query_router`` pipeline (seed 004): measured outcomes → router SFT → routing evaluation."""

from router_pipelines.pipelines.query_router.pipeline import create_pipeline

__all__ = ["create_pipeline"]
