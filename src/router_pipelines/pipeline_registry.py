"""Project pipelines.

Each user-facing pipeline carries what it needs upstream, so ``kedro run --pipeline=switchable``
works from raw data on a fresh clone; the token cache makes repeated data processing cheap.

- ``data_processing``: ingest, validate, split, tokenize, cache.
- ``pretrain``: + train the base LM and register it as ``base_lm``.
- ``switchable``: + the base LM (reused when a compatible one is saved, else trained) →
  switchable training → bit-width evaluation → Pareto fronts → ``switchable_lm``.
- ``__default__``: data → train the base LM → the switchable part on it.
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from router_pipelines.pipelines import data_processing, pretrain, switchable


def register_pipelines() -> dict[str, Pipeline]:
    data = data_processing.create_pipeline()
    base = pretrain.create_pipeline()
    switchable_part = switchable.create_pipeline()
    return {
        "data_processing": data,
        "pretrain": data + base,
        "switchable": data + switchable.create_base_pipeline() + switchable_part,
        # Not the sum of the above: `pretrain` and `switchable` both produce `base_model`.
        "__default__": data + base + switchable_part,
    }
