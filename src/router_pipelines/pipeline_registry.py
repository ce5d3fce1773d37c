"""Project pipelines: each model family is a Kedro namespace, composed here.

Every user-facing pipeline carries what it needs upstream, so ``kedro run --pipelines=switchable``
works from raw data on a fresh clone; the token cache and model reuse make repeated upstream
work cheap.

- ``data_processing``: ingest, validate, split, tokenize, cache.
- ``pretrain``: + train the base LM (namespace ``pretrain``) and register it as ``base_lm``.
- ``switchable``: + the base LM, reused when a compatible one is saved or registered
  (``switchable.base``), else trained → switchable training (namespace ``switchable``) →
  bit-width evaluation → Pareto fronts → ``switchable_lm``.
- ``precision_router``: + the switchable model (reused or trained) → a per-layer precision
  router on it → comparison with uniform, static and random assignments → ``precision_router``.
  ``precision_router_ptq``: the router on a post-training quantized LM, no switchable step.
- ``query_router``: + the switchable model (strong = its highest width) and the ladder LM (cheap:
  a smaller LM trained on the same tokens) → measured per-query outcomes → an LM fine-tuned to
  emit ``[[1]]``..``[[5]]`` → APGR/CPT → ``query_router`` and ``routed_lm``.
- ``memory``: + the base LM (reused or trained) → a Mixture-of-Chapters memory adapter
  instruction-tuned on the embedded chat corpus → ``memory_lm``.
- ``mod`` / ``dtf`` / ``depth_routing``: Mixture-of-Depths or the Dynamic Transformer (from
  scratch or by transfer) beside a dense baseline trained by the same engine →
  ``mod_lm`` / ``dtf_lm``; ``depth_routing`` reads ``depth_routing.model_type``.
- ``__default__``: the project's main story: data → train the base LM → the switchable family
  on it → the two routers that use that switchable model: per layer (``precision_router``,
  registered after and referencing the ``switchable_lm`` version this run made) and per query
  (``query_router``, its router fine-tuned from this run's base LM). About 13–20 minutes on 2
  cores (README). MoD/DTF and the memory adapter run by name.

A family that starts from another family's model includes that family's pipeline built with
``create_pipeline(source="<its params key>")``: the provider node then reuses a compatible
model or trains one, as the family's parameters say (see docs/architecture.md).
"""

from __future__ import annotations

from kedro.pipeline import Pipeline

from router_pipelines.pipelines import (
    data_processing,
    depth_routing,
    memory,
    precision_router,
    pretrain,
    query_router,
    switchable,
)


def register_pipelines() -> dict[str, Pipeline]:
    data = data_processing.create_pipeline()
    trained_base = pretrain.create_pipeline()
    provided_base = pretrain.create_pipeline(source="switchable.base")

    def provided_switchable(key: str) -> Pipeline:
        # Only the provider chain (reuse or train): not the switchable bit-width evaluation.
        return switchable.create_pipeline(source=key).to_outputs("switchable.model")

    pipelines = {
        "data_processing": data,
        "pretrain": data + trained_base,
        "switchable": data + provided_base + switchable.create_pipeline(),
        "__default__": data
        + trained_base
        + switchable.create_pipeline()
        + precision_router.create_pipeline(switchable_registered=True)
        + query_router.create_pipeline(),
        "precision_router": data
        + provided_base
        + provided_switchable("precision_router.switchable")
        + precision_router.create_pipeline(),
        "precision_router_ptq": data
        + provided_base
        + precision_router.create_pipeline(with_switchable=False),
        "query_router": data
        + provided_base
        + provided_switchable("query_router.switchable")
        + query_router.create_pipeline(),
        "memory": data + pretrain.create_pipeline(source="memory.base") + memory.create_pipeline(),
    }
    for name, model_type in (("depth_routing", None), ("mod", "mod"), ("dtf", "dtf")):
        pipelines[name] = data + depth_routing.create_pipeline(model_type=model_type)
    return pipelines
