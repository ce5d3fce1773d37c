"""Shared helpers of the benchmark scripts: the machine block, timing statistics, result JSON.

Every ``benchmarks/bench_*.py`` writes one JSON file in the convention of
``benchmarks/README.md`` through :func:`write_result`; ``run_all.py`` renders them all into
``docs/benchmarks.md``. Scripts import this module as ``common`` (``benchmarks/`` is on
``sys.path`` when a script runs as ``python benchmarks/bench_x.py``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCHMARKS_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCHMARKS_DIR.parent
RESULTS_DIR = BENCHMARKS_DIR / "results"
QUICK_RESULTS_DIR = Path(tempfile.gettempdir()) / "router_pipelines_benchmarks"
RESULTS_DIR_ENV = "ROUTER_BENCH_RESULTS_DIR"  # set by run_all.py: where scripts write results
NOISY_LOAD = 1.5  # 1-minute load average above which timings on a shared machine are noisy
LIBRARIES = ("torch", "transformers", "accelerate", "tokenizers", "kedro")


def make_parser(description: str) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with the flags every benchmark shares.

    ``--quick`` (smoke run in well under 30 s), ``--out`` (result JSON path; default
    ``benchmarks/results/<name>.json``, or a temp folder with ``--quick`` so a smoke run never
    overwrites committed results), ``--threads`` (torch intra-op threads; default all cores)
    and ``--seed``.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run (< 30 s)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON path")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: the usable cores)"
    )
    parser.add_argument("--seed", type=int, default=0, help="model init and data seed")
    return parser


def result_path(name: str, args: argparse.Namespace) -> Path:
    """Where the result JSON of benchmark ``name`` goes: ``--out``, else
    ``$ROUTER_BENCH_RESULTS_DIR/<name>.json`` (run_all.py sets it), else see :func:`make_parser`.
    """
    if args.out is not None:
        return Path(args.out)
    if os.environ.get(RESULTS_DIR_ENV):
        return Path(os.environ[RESULTS_DIR_ENV]) / f"{name}.json"
    return (QUICK_RESULTS_DIR if args.quick else RESULTS_DIR) / f"{name}.json"


def usable_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (default: the usable cores) and return it."""
    import torch

    count = threads or usable_cores()
    torch.set_num_threads(count)
    return count


def cpu_model() -> str:
    """The CPU's ``model name`` from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags(wanted: Sequence[str] = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")) -> list[str]:
    """Which of the ``wanted`` instruction-set flags the CPU reports (they set fp32/bf16 peaks)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [flag for flag in wanted if flag in flags]
    except OSError:
        pass
    return []


def load_average() -> list[float]:
    """The 1-, 5- and 15-minute load averages, rounded (empty where unsupported)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return []


def machine_info(threads: int | None = None) -> dict[str, Any]:
    """The machine block of a result: CPU, cores, memory, library versions, threads, load.

    Call it at the start of a benchmark; :func:`write_result` adds the load average at the end.
    """
    import torch

    memory_gib = None
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory_gib = round(pages * page_size / 2**30, 1)
    except (AttributeError, ValueError, OSError):
        pass
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "cores_usable": usable_cores(),
        "cores_host": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": platform.platform(),
        "python": platform.python_version(),
        **versions,
        "torch_threads": threads if threads is not None else torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_avg_start": load_average(),
    }


def summarize(samples: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, IQR, min and count of timing samples (seconds or any unit).

    The median and IQR rather than mean and standard deviation: on a shared machine a few
    samples are slowed by other processes, and those should not move the summary.
    """
    values = sorted(float(x) for x in samples)
    if not values:
        raise ValueError("samples: need at least one timing sample, got none")
    if len(values) == 1:
        q1 = q3 = values[0]
    else:
        q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return {
        "median": statistics.median(values),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": values[0],
        "n": len(values),
    }


def time_calls(
    fn: Callable[[], Any], repeats: int, warmup: int = 1, sync: Callable[[], Any] | None = None
) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls.

    Args:
        fn: the work to time (no arguments; its result is ignored).
        repeats: timed calls (>= 1).
        warmup: untimed calls first (caches, allocator, lazy init).
        sync: called after each ``fn`` inside the timed region (e.g. ``torch.cuda.synchronize``).
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats: need >= 1 (got {repeats}) and warmup >= 0 (got {warmup})")
    for _ in range(warmup):
        fn()
        if sync is not None:
            sync()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        samples.append(time.perf_counter() - started)
    return samples


def target(what: str, goal: str, measured: float | str, met: bool) -> dict[str, Any]:
    """One row of a result's ``targets`` list (``met`` is rendered met / MISSED)."""
    return {"what": what, "target": goal, "measured": measured, "met": bool(met)}


def load_notes(machine: dict[str, Any]) -> list[str]:
    """A note when the 1-minute load average was above :data:`NOISY_LOAD` at start or end."""
    loads = [x for key in ("load_avg_start", "load_avg_end") for x in machine.get(key, [])[:1]]
    worst = max(loads, default=0.0)
    if worst > NOISY_LOAD:
        return [
            f"The 1-minute load average reached {worst:.2f} on {machine.get('cores_usable')} "
            "usable cores during this run (other jobs shared the machine): timings are noisy "
            "and probably slower than on an idle machine."
        ]
    return []


def write_result(
    path: Path,
    *,
    name: str,
    title: str,
    machine: dict[str, Any],
    config: dict[str, Any],
    results: list[dict[str, Any]],
    targets: list[dict[str, Any]] | None = None,
    notes: list[str] | None = None,
    seconds: float | None = None,
) -> Path:
    """Write one benchmark result in the shared JSON convention and return its path.

    Adds ``load_avg_end`` to ``machine``, a load note when the machine was busy, the command
    line and the UTC time. Rows should be flat dicts of numbers and strings (one table row each).
    """
    machine = {**machine, "load_avg_end": load_average()}
    payload = {
        "name": name,
        "title": title,
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["python", _relative(sys.argv[0]), *sys.argv[1:]]),
        "seconds": round(seconds, 1) if seconds is not None else None,
        "machine": machine,
        "config": config,
        "results": results,
        "targets": targets or [],
        "notes": list(notes or []) + load_notes(machine),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    print(f"wrote {path}")
    return path


def _relative(path: str) -> str:
    """``path`` relative to the project root when it lies inside it (portable commands)."""
    try:
        return str(Path(path).resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return path


def _jsonable(value: Any) -> Any:
    """Fallback for ``json.dumps``: paths and numpy/torch scalars."""
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
