"""Serving: MLflow pyfunc wrappers logged from code, and the one registration function.

* :func:`register_model` — log a :class:`~router_pipelines.models.bundle.ModelBundle` as a pyfunc
  model of the active run and register a new version (every family calls it).
* :data:`WRAPPERS` — family -> wrapper module (``causal_lm``: text in, greedy continuation out,
  param ``max_new_tokens``; ``switchable``: the same plus ``bits``).

Reading registered models back inside the pipelines never goes through pyfunc: see
:class:`router_pipelines.datasets.ModelRegistryDataset`.
"""

from router_pipelines.serving.registration import register_model
from router_pipelines.serving.wrappers import WRAPPERS, PyfuncWrapper, wrapper_for

__all__ = ["WRAPPERS", "PyfuncWrapper", "register_model", "wrapper_for"]
