"""The ``switchable`` namespace: one model that runs at 2, 4 or 8 bits (seed 001)."""

from router_pipelines.pipelines.switchable.pipeline import create_pipeline

__all__ = ["create_pipeline"]
