"""Build the default corpus, data/01_raw/python_docs.jsonl, from text that ships with Python.

Sources, both part of every CPython install (so the project needs no download):

* ``pydoc_data.topics.topics``: the language reference topics behind ``help("if")`` etc.;
* the docstrings of standard-library modules and of the classes, functions and methods they
  define (one record per module, like one web page per module).

Records follow C4's JSONL schema: ``text``, ``url`` (``https://docs.python.org/3.11/library/
<module>.html`` or ``pydoc-topic:<name>``) and a fixed ``timestamp``. Everything is sorted and no
time or memory address enters the text, so the same interpreter always writes the same bytes.

Usage::

    python scripts/build_corpus.py [--output data/01_raw/python_docs.jsonl] [--max-bytes 4000000]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import io
import json
import pkgutil
import sys
import warnings
from pathlib import Path

TIMESTAMP = "2024-01-01T00:00:00Z"
MIN_CHARS = 200
# Modules that open windows or browsers, print on import, are test suites or need a display.
SKIP_PREFIXES = (
    "test",
    "idlelib",
    "tkinter",
    "turtle",
    "turtledemo",
    "antigravity",
    "this",
    "__hello__",
    "__phello__",
    "pydoc_data",
    "readline",  # can write terminal escapes on import
    "lib2to3.tests",
    "ensurepip",  # carries wheels, nothing to read
    "distutils",  # deprecated, and setuptools swaps in its own copy inside virtualenvs
    "encodings.",  # one tiny codec module each
)
SKIP_PARTS = {"__main__", "tests", "test", "idle_test"}


def pydoc_topic_records() -> list[dict[str, str]]:
    """One record per ``pydoc`` topic."""
    from pydoc_data.topics import topics

    return [
        _record(text, f"pydoc-topic:{name}")
        for name, text in sorted(topics.items())
        if len(_clean(text)) >= MIN_CHARS
    ]


def stdlib_module_names() -> list[str]:
    """Public standard-library modules and their public submodules, sorted."""
    names: set[str] = set()
    for top in sorted(sys.stdlib_module_names):
        if not top.startswith("_"):
            _collect(top, names)
    return sorted(names)


def _collect(name: str, names: set[str]) -> None:
    """Add module ``name`` and, for a package, its public submodules (recursively)."""
    module = _import(name)
    if module is None:
        return
    names.add(name)
    for info in pkgutil.iter_modules(getattr(module, "__path__", []), prefix=f"{name}."):
        last = info.name.rsplit(".", 1)[1]
        if not last.startswith("_") and last not in SKIP_PARTS:
            _collect(info.name, names)


def module_record(name: str, version: str) -> dict[str, str] | None:
    """The docstrings of module ``name`` and of what it defines, as one record (or None)."""
    module = _import(name)
    if module is None:
        return None
    sections = [f"{name}\n\n{_clean(module.__doc__)}" if module.__doc__ else name]
    for attr, obj in sorted(vars(module).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if inspect.isclass(obj):
            sections.extend(_class_sections(name, attr, obj))
        elif inspect.isfunction(obj) or inspect.isbuiltin(obj):
            doc = _own_doc(obj)
            if doc:
                sections.append(f"{name}.{attr}{_signature(obj)}\n{doc}")
    text = "\n\n".join(sections)
    if len(text) < MIN_CHARS:
        return None
    return _record(text, f"https://docs.python.org/{version}/library/{name}.html")


def build(max_bytes: int) -> list[dict[str, str]]:
    """Topics first, then modules in name order, until ``max_bytes`` of JSONL."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    records = pydoc_topic_records()
    for name in stdlib_module_names():
        record = module_record(name, version)
        if record is not None:
            records.append(record)
    kept, size = [], 0
    for record in records:
        line_size = len(_line(record).encode("utf-8"))
        if size + line_size > max_bytes:
            break
        kept.append(record)
        size += line_size
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=Path("data/01_raw/python_docs.jsonl"))
    parser.add_argument("--max-bytes", type=int, default=4_000_000)
    args = parser.parse_args()
    records = build(args.max_bytes)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text("".join(_line(r) for r in records), encoding="utf-8")
    tmp.replace(args.output)
    print(f"wrote {len(records)} records, {args.output.stat().st_size} bytes to {args.output}")


def _class_sections(module: str, attr: str, cls: type) -> list[str]:
    sections = []
    doc = _own_doc(cls)
    if doc:
        sections.append(f"class {module}.{attr}\n{doc}")
    for method_name, method in sorted(vars(cls).items()):
        if method_name.startswith("_") and method_name != "__init__":
            continue
        function = getattr(method, "__func__", method)  # classmethod/staticmethod
        if inspect.isfunction(function) or inspect.ismethoddescriptor(function):
            method_doc = _own_doc(function)
            if method_doc:
                sections.append(f"{module}.{attr}.{method_name}\n{method_doc}")
    return sections


def _own_doc(obj: object) -> str:
    """The object's own docstring (not inherited, unlike ``inspect.getdoc``), cleaned."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return _clean(doc) if isinstance(doc, str) else ""


def _signature(obj: object) -> str:
    """Parameter names only: default values can hold the environment (``cgi.parse`` defaults
    to ``os.environ``), interpreter paths or addresses, none of which may enter the corpus."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return ""
    parameters = [
        p.replace(default=...) if p.default is not p.empty else p
        for p in signature.parameters.values()
    ]
    return str(signature.replace(parameters=parameters, return_annotation=signature.empty))


def _clean(text: str | None) -> str:
    if not text:
        return ""
    lines = inspect.cleandoc(text).splitlines()
    return "\n".join(line.rstrip() for line in lines).strip()


def _record(text: str, url: str) -> dict[str, str]:
    return {"text": _clean(text), "url": url, "timestamp": TIMESTAMP}


def _line(record: dict[str, str]) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def _skipped(name: str) -> bool:
    return any(name == p.rstrip(".") or name.startswith(p.rstrip(".") + ".") for p in SKIP_PREFIXES)


def _import(name: str):
    """Import ``name`` quietly; ``None`` if it fails (platform-specific, missing C library...)."""
    if _skipped(name):
        return None
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except BaseException:  # noqa: BLE001 - SystemExit/ImportError/OSError all mean "skip"
            return None


if __name__ == "__main__":
    main()
