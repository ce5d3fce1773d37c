"""Every benchmark still runs: ``bench_*.py --quick`` in a throw-away copy of the project.

The scripts call the pipelines' nodes directly, so a refactor of a node's signature or module
breaks them without any other test noticing (bench_depth_routing.py imported a node from a
module it had left, and passed one argument too few to another). The smoke run exercises
every code path a full run takes, at tiny sizes, and checks the result JSON it writes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from project_copy import PROJECT_ROOT, copy_project

SCRIPTS = sorted(p.name for p in (PROJECT_ROOT / "benchmarks").glob("bench_*.py"))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The project copy with benchmarks/ (its scripts find the project from their own path)."""
    root = copy_project(tmp_path_factory.mktemp("bench-project"))
    shutil.copytree(
        PROJECT_ROOT / "benchmarks",
        root / "benchmarks",
        ignore=shutil.ignore_patterns("results", "__pycache__"),
    )
    return root


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_the_benchmark_runs_quick_and_writes_its_result(project, script, tmp_path):
    out = tmp_path / "result.json"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("ROUTER_BENCH_RESULTS_DIR", None)
    result = subprocess.run(
        [sys.executable, str(project / "benchmarks" / script), "--quick", "--threads", "1"]
        + ["--out", str(out)],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    payload = json.loads(out.read_text())
    assert payload["name"] == script.removeprefix("bench_").removesuffix(".py")
    assert payload["results"], "the smoke run measured nothing"
    assert payload["config"].get("quick") is True
