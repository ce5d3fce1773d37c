"""Pipeline ``pretrain``: the base causal language model every family starts from."""

from router_pipelines.pipelines.pretrain.pipeline import create_pipeline

__all__ = ["create_pipeline"]
