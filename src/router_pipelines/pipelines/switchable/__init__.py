"""Pipeline ``switchable``: one model that runs at 2, 4 or 8 bits (seed 001)."""

from router_pipelines.pipelines.switchable.pipeline import create_base_pipeline, create_pipeline

__all__ = ["create_base_pipeline", "create_pipeline"]
