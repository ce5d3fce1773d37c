"""Start-up stays cheap: building every pipeline (what `kedro registry list`, `kedro viz` and
the pre-run checks do) imports no torch, transformers or mlflow; the nodes import them when
they run."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "transformers", "mlflow")


def test_building_every_pipeline_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from router_pipelines.pipeline_registry import register_pipelines\n"
        "pipelines = register_pipelines()\n"
        f"print(len(pipelines), [m for m in {HEAVY!r} if m in sys.modules])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    count, loaded = done.stdout.strip().split(" ", 1)
    assert int(count) >= 11
    assert loaded == "[]", f"building the pipelines imported {loaded}"
