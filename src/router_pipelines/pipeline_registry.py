"""Project pipelines: each model family is a Kedro namespace, composed here.

Every user-facing pipeline carries what it needs upstream, so ``kedro run --pipeline=switchable``
works from raw data on a fresh clone; the token cache and model reuse make repeated upstream
work cheap.

- ``data_processing``: ingest, validate, split, tokenize, cache.
- ``pretrain``: + train the base LM (namespace ``pretrain``) and register it as ``base_lm``.
- ``switchable``: + the base LM, reused when a compatible one is saved or registered
  (``switchable.base``), else trained → switchable training (namespace ``switchable``) →
  bit-width evaluation → Pareto fronts → ``switchable_lm``.
- ``__default__``: data → train the base LM → the switchable family on it.

A family that starts from another family's model includes that family's pipeline built with
``create_pipeline(source="<its params key>")``: the provider node then reuses a compatible
model or trains one, as the family's parameters say (see docs/architecture.md).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from router_pipelines.pipelines import data_processing, pretrain, switchable


def register_pipelines() -> dict[str, Pipeline]:
    data = data_processing.create_pipeline()
    trained_base = pretrain.create_pipeline()
    provided_base = pretrain.create_pipeline(source="switchable.base")
    switchable_family = switchable.create_pipeline()
    return {
        "data_processing": data,
        "pretrain": data + trained_base,
        "switchable": data + provided_base + switchable_family,
        "__default__": data + trained_base + switchable_family,
    }
