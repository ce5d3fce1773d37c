"""docs/ holds no absolute path of the machine that wrote it; benchmarks/run_all.py removes
the checkout's paths from what it renders."""

from __future__ import annotations

import importlib.util
import re
import sys

from project_copy import PROJECT_ROOT

# An absolute path of a machine: /work/..., /tmp/..., /root/..., /home/..., /Users/... (a
# tool's usual location such as /usr/bin/time is not one).
MACHINE_PATH = re.compile(r"(?<![\w.~])/(?:work|tmp|root|home|Users|private|mnt)/[\w.-]+")


def _run_all():
    spec = importlib.util.spec_from_file_location("run_all", PROJECT_ROOT / "benchmarks/run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_contain_no_absolute_machine_paths():
    found = {
        str(path.relative_to(PROJECT_ROOT)): MACHINE_PATH.findall(path.read_text())
        for path in sorted((PROJECT_ROOT / "docs").rglob("*.md"))
    }
    assert not {k: v for k, v in found.items() if v}


def test_rendered_benchmarks_lose_the_checkouts_paths():
    run_all = _run_all()
    text = (
        f"`{sys.executable} benchmarks/bench_x.py` wrote {PROJECT_ROOT}/data/08_reporting/x.json "
        f"in {PROJECT_ROOT} with --cache /tmp/bench_cache"
    )
    cleaned = run_all.machine_paths_removed(text)
    assert cleaned == (
        "`python benchmarks/bench_x.py` wrote data/08_reporting/x.json in . "
        "with --cache $TMPDIR/bench_cache"
    )
    assert str(PROJECT_ROOT) not in cleaned
