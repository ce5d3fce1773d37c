"""The ``precision_router`` namespace (seed 000): a router choosing each layer's width."""

from router_pipelines.pipelines.precision_router.pipeline import create_pipeline

__all__ = ["create_pipeline"]
