"""Project pipelines.

Each user-facing pipeline carries what it needs upstream, so ``kedro run --pipeline=pretrain``
works from raw data on a fresh clone; the token cache makes repeated data processing cheap.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from router_pipelines.pipelines import data_processing, pretrain


def register_pipelines() -> dict[str, Pipeline]:
    data = data_processing.create_pipeline()
    base = pretrain.create_pipeline()
    pipelines = {
        "data_processing": data,
        "pretrain": data + base,
    }
    pipelines["__default__"] = sum(pipelines.values(), start=Pipeline([]))
    return pipelines
