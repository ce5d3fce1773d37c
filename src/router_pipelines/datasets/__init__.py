"""Kedro datasets for Hugging Face style folders (``save_pretrained`` / ``from_pretrained``)."""

from router_pipelines.datasets.pretrained import PretrainedModelDataset, PretrainedTokenizerDataset

__all__ = ["PretrainedModelDataset", "PretrainedTokenizerDataset"]
