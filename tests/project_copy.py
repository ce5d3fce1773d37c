"""A throw-away copy of the project for tests that run real Kedro sessions or commands
(import as ``from project_copy import copy_project``)."""

from __future__ import annotations

import shutil
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def copy_project(root: Path) -> Path:
    """conf/ (without local), pyproject.toml, .telemetry and the embedded corpus copied to
    ``root``; the package itself is the installed (editable) one. Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(PROJECT_ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    for name in ("pyproject.toml", ".telemetry"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    (root / "src").mkdir()
    raw = root / "data" / "01_raw"
    raw.mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "data/01_raw/python_docs.jsonl", raw / "python_docs.jsonl")
    return root
