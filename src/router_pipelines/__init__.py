"""router_pipelines: train, evaluate and ship language models that adapt their own cost."""

__version__ = "0.1.0"
