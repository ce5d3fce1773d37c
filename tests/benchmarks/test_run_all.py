"""benchmarks/run_all.py renders result JSON into docs/benchmarks.md (no benchmark is run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

RUN_ALL = Path(__file__).resolve().parents[2] / "benchmarks" / "run_all.py"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", RUN_ALL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(name: str, met: bool) -> dict:
    return {
        "name": name,
        "title": f"Title of {name}",
        "created": "2026-01-01 00:00 UTC",
        "command": f"python benchmarks/bench_{name}.py",
        "seconds": 12.34,
        "machine": {"cpu": "Test CPU", "cores_usable": 2, "load_avg_start": [0.5, 0.4, 0.3]},
        "config": {"preset": "tiny", "steps": 20},
        "results": [
            {"loop": "bare", "ms_per_step": 100.0, "tokens_per_s": 20480.4},
            {"loop": "engine", "ms_per_step": 103.456, "note": "a|b"},
            {"table": "second table", "what": "x", "seconds": 0.5},
        ],
        "targets": [
            {"what": "overhead", "target": "<= 5%", "measured": "+3.5%", "met": met},
        ],
        "notes": ["measured with a clock"],
    }


def test_render_result_writes_tables_targets_and_notes(run_all):
    text = run_all.render_result(_result("engine", met=True))
    expected_rows = [
        "## Title of engine",
        "`engine` run 2026-01-01 00:00 UTC with `python benchmarks/bench_engine.py` in 12.34 s.",
        "| loop | ms_per_step | tokens_per_s | note |",
        "| bare | 100 | 20,480 |  |",
        "| engine | 103.5 |  | a\\|b |",
        "**second table**",
        "| what | seconds |",
        "| x | 0.5 |",
        "| overhead | <= 5% | +3.5% | met |",
        "- measured with a clock",
        "| cpu | Test CPU |",
        "| load_avg_start | 0.5, 0.4, 0.3 |",
        "| steps | 20 |",
    ]
    lines = text.splitlines()
    for row in expected_rows:
        assert row in lines, row
    assert "MISSED" not in text


def test_missed_target_is_flagged_in_the_section_and_the_overview(run_all):
    docs = run_all.render_docs([_result("data", met=False), _result("engine", met=True)])
    lines = docs.splitlines()
    assert "| overhead | <= 5% | +3.5% | **MISSED** |" in lines
    assert "| overhead | <= 5% | +3.5% | met |" in lines
    overview = [line for line in lines if line.startswith("| Title of ")]
    assert overview[0].startswith("| Title of data | 0/1 met | overhead |")
    assert overview[1].startswith("| Title of engine | 1/1 met |  |")
    assert docs.index("## Title of data") < docs.index("## Title of engine")


def test_write_docs_reads_every_json_and_rejects_a_broken_one(run_all, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    for name in ("b", "a"):
        (results / f"{name}.json").write_text(json.dumps(_result(name, met=True)))
    docs = run_all.write_docs(results, tmp_path / "docs" / "benchmarks.md").read_text()
    assert docs.index("## Title of a") < docs.index("## Title of b")

    broken = _result("c", met=True)
    del broken["machine"]
    (results / "c.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"c\.json: missing key\(s\) \['machine'\]"):
        run_all.load_results(results)
