"""Pipeline ``depth_routing`` (also ``mod`` and ``dtf``): token routing over depth."""

from router_pipelines.pipelines.depth_routing.pipeline import create_pipeline

__all__ = ["create_pipeline"]
