"""The ``memory`` pipeline (seed 002): a Mixture-of-Chapters memory adapter on the base LM."""

from router_pipelines.pipelines.memory.pipeline import create_pipeline

__all__ = ["create_pipeline"]
