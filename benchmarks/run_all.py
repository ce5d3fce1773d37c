"""Run benchmark scripts, each in its own subprocess, then regenerate ``docs/benchmarks.md``.

Usage::

    python benchmarks/run_all.py                      # every benchmarks/bench_*.py, then the docs
    python benchmarks/run_all.py bench_engine.py      # only these scripts, then the docs
    python benchmarks/run_all.py --quick              # smoke runs; results and docs in a temp folder
    python benchmarks/run_all.py --docs-only          # re-render docs/benchmarks.md from the JSON
    python benchmarks/run_all.py bench_data.py -- --repeats 5   # flags after -- go to each script

The docs are rendered from every ``*.json`` in the results folder, in the convention of
``benchmarks/README.md``, so results of scripts that did not run this time stay in the docs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
DOCS_PATH = PROJECT_ROOT / "docs" / "benchmarks.md"
REQUIRED_KEYS = ("name", "title", "machine", "config", "results")
TARGET_KEYS = ("what", "target", "measured", "met")
MACHINE_SUMMARY = ("cpu", "cores_usable", "torch", "torch_threads", "load_avg_start")


def discover(names: Sequence[str] = ()) -> list[Path]:
    """The benchmark scripts to run: ``names`` (file names or paths), else every ``bench_*.py``."""
    if not names:
        return sorted(BENCHMARKS_DIR.glob("bench_*.py"))
    scripts = []
    for name in names:
        path = Path(name)
        if not path.is_file():
            path = BENCHMARKS_DIR / path.name
        if not path.is_file() or not path.name.startswith("bench_") or path.suffix != ".py":
            raise ValueError(f"scripts: {name!r} is not a benchmarks/bench_*.py file")
        scripts.append(path)
    return scripts


def run_scripts(scripts: Sequence[Path], extra_args: Sequence[str]) -> dict[str, int]:
    """Run each script in a new interpreter from the project root; returns exit codes by name."""
    codes = {}
    for script in scripts:
        print(f"==> {script.name} {' '.join(extra_args)}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(script), *extra_args], cwd=PROJECT_ROOT)
        codes[script.name] = done.returncode
        print(f"<== {script.name}: exit {done.returncode} in {time.perf_counter() - started:.0f} s")
    return codes


def load_results(results_dir: Path) -> list[dict[str, Any]]:
    """Every result JSON in ``results_dir``, validated, sorted by ``name``.

    Raises:
        ValueError: a file is not valid JSON or lacks a required key (named in the message).
    """
    results = []
    for path in sorted(Path(results_dir).glob("*.json")):
        try:
            result = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from err
        check_result(result, str(path))
        results.append(result)
    return sorted(results, key=lambda r: r["name"])


def check_result(result: Any, where: str) -> None:
    """Raise ``ValueError`` naming ``where`` and the key when ``result`` breaks the convention."""
    if not isinstance(result, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(result).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}; required: {list(REQUIRED_KEYS)}")
    for key, kind in (("machine", dict), ("config", dict), ("results", list)):
        if not isinstance(result[key], kind):
            raise ValueError(f"{where}: {key!r} must be a {kind.__name__}")
    if not all(isinstance(row, dict) for row in result["results"]):
        raise ValueError(f"{where}: every entry of 'results' must be an object (one table row)")
    for i, entry in enumerate(result.get("targets") or []):
        absent = [key for key in TARGET_KEYS if key not in entry]
        if absent:
            raise ValueError(f"{where}: targets[{i}] lacks {absent}; needs {list(TARGET_KEYS)}")


def cell(value: Any) -> str:
    """One markdown table cell: numbers compact, lists joined, pipes escaped."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"
    if isinstance(value, list | tuple):
        text = ", ".join(cell(v) for v in value)
    elif isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A markdown table; columns default to every key of ``rows`` in first-seen order."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join(" --- " for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def key_values(mapping: dict[str, Any]) -> str:
    """A two-column ``| key | value |`` table of a flat mapping."""
    return table([{"key": k, "value": v} for k, v in mapping.items()], ["key", "value"])


def status(met: bool) -> str:
    return "met" if met else "**MISSED**"


def render_result(result: dict[str, Any]) -> str:
    """The markdown section of one benchmark result."""
    parts = [f"## {result['title']}", ""]
    when = [f"`{result['name']}`"]
    if result.get("created"):
        when.append(f"run {result['created']}")
    if result.get("command"):
        when.append(f"with `{result['command']}`")
    if result.get("seconds") is not None:
        when.append(f"in {cell(float(result['seconds']))} s")
    parts += [" ".join(when) + ".", ""]
    groups: dict[str | None, list[dict[str, Any]]] = {}
    for row in result["results"]:
        groups.setdefault(row.get("table"), []).append(
            {k: v for k, v in row.items() if k != "table"}
        )
    for name, rows in groups.items():
        if name:
            parts += [f"**{name}**", ""]
        parts += [table(rows), ""]
    targets = result.get("targets") or []
    if targets:
        rows = [
            {
                "what": t["what"],
                "target": t["target"],
                "measured": t["measured"],
                "status": status(t["met"]),
            }
            for t in targets
        ]
        parts += ["**Targets**", "", table(rows, ["what", "target", "measured", "status"]), ""]
    if result.get("notes"):
        parts += ["**Notes**", ""] + [f"- {note}" for note in result["notes"]] + [""]
    parts += ["<details><summary>Machine and configuration</summary>", ""]
    parts += ["Machine:", "", key_values(result["machine"]), ""]
    parts += ["Configuration:", "", key_values(result["config"]), "", "</details>", ""]
    return "\n".join(parts)


def render_docs(results: Sequence[dict[str, Any]]) -> str:
    """The whole ``docs/benchmarks.md``: an overview, then one section per result."""
    lines = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run_all.py` from `benchmarks/results/*.json`; do not edit by",
        "hand. How to run them and the result format: [benchmarks/README.md](../benchmarks/README.md).",
        "",
    ]
    if not results:
        return "\n".join(lines + ["No results yet: run `python benchmarks/run_all.py`.", ""])
    overview = []
    for result in results:
        targets = result.get("targets") or []
        met = sum(bool(t["met"]) for t in targets)
        machine = result["machine"]
        overview.append(
            {
                "benchmark": result["title"],
                "targets": f"{met}/{len(targets)} met" if targets else "",
                "missed": ", ".join(t["what"] for t in targets if not t["met"]),
                "run": result.get("created"),
                **{k: machine.get(k) for k in MACHINE_SUMMARY if k in machine},
            }
        )
    lines += [table(overview), ""]
    lines += [render_result(result) for result in results]
    return "\n".join(lines).rstrip("\n") + "\n"


def machine_paths_removed(text: str) -> str:
    """``text`` without this checkout's absolute paths: the project root becomes relative
    (``/home/x/router_pipelines/data/..`` -> ``data/..``), a temp folder is ``$TMPDIR/`` and the
    interpreter is ``python``, so
    the generated docs read the same on every machine (a result may record its command line)."""
    interpreters = {sys.executable, str(Path(sys.executable).resolve())}
    for interpreter in sorted(interpreters, key=len, reverse=True):
        text = text.replace(interpreter, "python")
    for root in sorted({str(PROJECT_ROOT), str(PROJECT_ROOT.resolve())}, key=len, reverse=True):
        text = text.replace(root + "/", "").replace(root, ".")
    import tempfile

    for temp in sorted({tempfile.gettempdir(), "/tmp"}, key=len, reverse=True):
        text = text.replace(temp + "/", "$TMPDIR/")  # a scratch folder a benchmark was given
    return text


def write_docs(results_dir: Path, docs_path: Path) -> Path:
    """Render every result in ``results_dir`` into ``docs_path``; returns the path."""
    docs_path = Path(docs_path)
    docs_path.parent.mkdir(parents=True, exist_ok=True)
    docs_path.write_text(machine_paths_removed(render_docs(load_results(results_dir))))
    print(f"wrote {docs_path}")
    return docs_path


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        extra = argv[argv.index("--") + 1 :]
        argv = argv[: argv.index("--")]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="*", help="bench_*.py files to run (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke runs; output in a temp dir")
    parser.add_argument("--docs-only", action="store_true", help="only re-render the docs")
    parser.add_argument("--results-dir", type=Path, default=None)
    parser.add_argument("--docs", type=Path, default=None, help="markdown file to write")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(BENCHMARKS_DIR))
    import common

    quick_dir = common.QUICK_RESULTS_DIR
    results_dir = args.results_dir or (quick_dir if args.quick else RESULTS_DIR)
    docs_path = args.docs or (quick_dir / "benchmarks.md" if args.quick else DOCS_PATH)
    codes: dict[str, int] = {}
    if not args.docs_only:
        scripts = discover(args.scripts)
        os.environ[common.RESULTS_DIR_ENV] = str(results_dir)  # read by common.result_path
        codes = run_scripts(scripts, (["--quick"] if args.quick else []) + extra)
    write_docs(results_dir, docs_path)
    failed = [name for name, code in codes.items() if code != 0]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
