"""Lazy package exports (PEP 562), so importing a package costs nothing until a name is used.

``kedro registry list`` and a warm ``kedro run`` import every pipeline and the modules their
nodes name; with eager ``__init__`` files that meant torch, transformers and accelerate before
any node ran. Each package lists its public names and the submodule defining them::

    __getattr__, __dir__, __all__ = lazy_exports(__name__, {"Trainer": "engine", ...})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` exporting ``name -> submodule``."""
    names = sorted(exports)

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module-level hook's own name
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{module}"), name)

    def __dir__() -> list[str]:  # noqa: N807
        return names

    return __getattr__, __dir__, names
