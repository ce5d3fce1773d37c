"""Which pyfunc wrapper serves which model family: one entry per family.

A wrapper is a module that defines a :class:`mlflow.pyfunc.PythonModel`, calls
``mlflow.models.set_model(...)`` on an instance, and has a ``signature()`` function declaring its
inputs, outputs and params. Its *file* is what MLflow logs and runs ("models from code"), so a
registered model never holds pickled objects. A new family adds a wrapper module next to
:mod:`router_pipelines.serving.causal_lm` and one entry in :data:`WRAPPERS`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class PyfuncWrapper:
    """A wrapper module and the bundle families it can serve."""

    name: str
    module: str  # dotted module name; its file becomes the logged model's code
    families: tuple[str, ...]  # ModelBundle.family values it accepts

    @property
    def code_path(self) -> Path:
        """The wrapper's source file (found without importing the module)."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or spec.origin is None:
            raise ValueError(f"wrapper {self.name!r}: module {self.module} not found")
        return Path(spec.origin)

    def signature(self) -> Any:
        """The ``mlflow.models.ModelSignature`` the wrapper declares."""
        return importlib.import_module(self.module).signature()


WRAPPERS: dict[str, PyfuncWrapper] = {
    "causal_lm": PyfuncWrapper("causal_lm", "router_pipelines.serving.causal_lm", ("causal_lm",)),
    "depth_routing": PyfuncWrapper(
        "depth_routing", "router_pipelines.serving.depth_routing", ("depth_routing",)
    ),
    "switchable": PyfuncWrapper(
        "switchable", "router_pipelines.serving.switchable", ("switchable",)
    ),
    "memory": PyfuncWrapper("memory", "router_pipelines.serving.memory", ("memory",)),
    "query_router": PyfuncWrapper(
        "query_router", "router_pipelines.serving.query_router", ("query_router",)
    ),
    "routed_lm": PyfuncWrapper("routed_lm", "router_pipelines.serving.routed_lm", ("switchable",)),
    "precision_router": PyfuncWrapper(
        "precision_router", "router_pipelines.serving.precision_router", ("precision_router",)
    ),
}


def wrapper_for(wrapper: str | PyfuncWrapper) -> PyfuncWrapper:
    """The wrapper named ``wrapper`` in :data:`WRAPPERS` (a :class:`PyfuncWrapper` as is).

    Raises:
        ValueError: an unknown name, listing the known ones.
    """
    if isinstance(wrapper, PyfuncWrapper):
        return wrapper
    if not isinstance(wrapper, str) or wrapper not in WRAPPERS:
        raise ValueError(
            f"wrapper: unknown pyfunc wrapper {wrapper!r}; known wrappers are {sorted(WRAPPERS)}"
        )
    return WRAPPERS[wrapper]
