"""``data_processing`` with a cold against a warm token cache, and tokenizer throughput.

1. Nodes: ``ingest_corpus``, ``split_corpus`` and ``tokenize_corpus`` on the embedded corpus with
   ``conf/base/parameters_data_processing.yml`` (``cache_dir`` in a temp folder), each run in a
   fresh Python subprocess: cold (empty cache), then warm (the cache the cold run wrote).
   Imports are timed separately from the nodes. ``--repeats`` times, a new cache each time.
2. ``kedro run --pipelines=data_processing``: wall time of the whole command (interpreter start,
   Kedro and MLflow start-up included), cold then warm, in a temp copy of the project (as
   ``tests/pipelines/test_end_to_end.py`` makes one) with MLflow on a temp sqlite file.
3. Tokenizer: byte-level BPE training time at vocab 8192 on the train split, and batch-encoding
   throughput (tokens/s, bytes/s) of the whole corpus with the trained fast tokenizer, with
   ``TOKENIZERS_PARALLELISM`` true and false.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

NAME = "data"
WARM_TARGET = 0.10  # warm / cold
WARM_RUN_TARGET_S = 6.0  # issue 7, section 6: a warm `kedro run --pipelines=data_processing`
RAW_PATH = common.PROJECT_ROOT / "data/01_raw/python_docs.jsonl"
PARAMS_FILE = common.PROJECT_ROOT / "conf/base/parameters_data_processing.yml"
RESULT_MARKER = "BENCH_DATA_RESULT "
NODES = ("ingest_corpus", "split_corpus", "tokenize_corpus")


def data_params(cache_dir: str, max_records: int | None) -> dict[str, Any]:
    """The base ``data:`` parameters with ``cache_dir`` (and optionally ``max_records``) set."""
    import yaml

    params = yaml.safe_load(PARAMS_FILE.read_text())["data"]
    params["raw_path"] = str(RAW_PATH)
    params["cache_dir"] = cache_dir
    if max_records is not None:
        params["max_records"] = max_records
    return params


def worker(cache_dir: str, max_records: int | None) -> None:
    """One fresh-process run of the three nodes; prints its timings as one JSON line."""
    started = time.perf_counter()
    # The nodes import the data layer (pandas, tokenizers, transformers) when they first run;
    # import it here so the node timings are the work alone, as the docstring says.
    import router_pipelines.data.hub
    import router_pipelines.data.prepare
    import router_pipelines.data.sources  # noqa: F401
    from router_pipelines.pipelines.data_processing import nodes

    timings = {"import_s": time.perf_counter() - started}
    params = data_params(cache_dir, max_records)
    node_started = time.perf_counter()
    corpus = nodes.ingest_corpus(params)
    timings["ingest_corpus_s"] = time.perf_counter() - node_started
    node_started = time.perf_counter()
    corpus_split = nodes.split_corpus(corpus, params)
    timings["split_corpus_s"] = time.perf_counter() - node_started
    node_started = time.perf_counter()
    *_, report = nodes.tokenize_corpus(corpus_split, params)
    timings["tokenize_corpus_s"] = time.perf_counter() - node_started
    timings["nodes_s"] = sum(timings[f"{node}_s"] for node in NODES)
    timings["cache_hit"] = report["cache_hit"]
    timings["train_tokens"] = report["train_tokens"]
    print(RESULT_MARKER + json.dumps(timings), flush=True)


def run_worker(cache_dir: str, max_records: int | None) -> dict[str, Any]:
    """Run :func:`worker` in a new interpreter; adds the whole process's wall time."""
    command = [sys.executable, __file__, "--worker", "--cache-dir", cache_dir]
    if max_records is not None:
        command += ["--max-records", str(max_records)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    process_s = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"data worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    line = next(x for x in done.stdout.splitlines() if x.startswith(RESULT_MARKER))
    return {**json.loads(line[len(RESULT_MARKER) :]), "process_s": process_s}


def bench_nodes(repeats: int, max_records: int | None) -> dict[str, list[dict[str, Any]]]:
    """Cold and warm node runs, ``repeats`` times, each with a new empty cache."""
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    for repeat in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench_data_cache_") as cache_dir:
            for state in ("cold", "warm"):
                run = run_worker(cache_dir, max_records)
                if run["cache_hit"] != (state == "warm"):
                    raise RuntimeError(f"{state} run: cache_hit={run['cache_hit']}, unexpected")
                runs[state].append(run)
                print(
                    f"nodes {repeat + 1}/{repeats} {state}: {run['nodes_s']:.2f} s (+{run['import_s']:.2f} s imports)"
                )
    return runs


def project_copy(root: Path) -> Path:
    """A throw-away project copy, made the way the end-to-end tests make one."""
    sys.path.insert(0, str(common.PROJECT_ROOT / "tests"))
    from project_copy import copy_project

    return copy_project(root)


def bench_kedro(repeats: int, max_records: int | None) -> dict[str, list[float]]:
    """Wall seconds of ``kedro run --pipelines=data_processing``, cold then warm, per repeat,
    and of ``kedro registry list`` (start-up plus loading every pipeline)."""
    kedro = Path(sys.executable).with_name("kedro")
    runs: dict[str, list[float]] = {"cold": [], "warm": [], "registry list": []}
    with tempfile.TemporaryDirectory(prefix="bench_data_kedro_") as tmp:
        uri = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "KEDRO_DISABLE_TELEMETRY": "1"}
        env.setdefault("HF_HUB_OFFLINE", "1")
        # Create the MLflow database once, so no cold run pays its schema migrations.
        init = f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"
        subprocess.run([sys.executable, "-c", init], env=env, check=True, capture_output=True)
        command = [str(kedro), "run", "--pipelines=data_processing"]
        if max_records is not None:
            command.append(f"--params=data.max_records={max_records}")
        for repeat in range(repeats):
            root = project_copy(Path(tmp) / f"project{repeat}")
            for state in ("cold", "warm"):
                started = time.perf_counter()
                done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
                seconds = time.perf_counter() - started
                if done.returncode != 0:
                    raise RuntimeError(
                        f"kedro run failed ({done.returncode}):\n{done.stderr[-3000:]}"
                    )
                # Wherever the catalog puts it (the path changes with namespacing).
                found = sorted(root.glob("data/**/data_report.json"))
                if not found:
                    raise RuntimeError(f"kedro {state} run: no data_report.json under {root}/data")
                report = json.loads(found[0].read_text())
                if report["cache_hit"] != (state == "warm"):
                    raise RuntimeError(f"kedro {state} run: cache_hit={report['cache_hit']}")
                runs[state].append(seconds)
                print(f"kedro {repeat + 1}/{repeats} {state}: {seconds:.2f} s")
            started = time.perf_counter()
            subprocess.run(
                [str(kedro), "registry", "list"], cwd=root, env=env, check=True, capture_output=True
            )
            runs["registry list"].append(time.perf_counter() - started)
    return runs


def bench_tokenizer(repeats: int, max_records: int | None, vocab_size: int) -> dict[str, Any]:
    """BPE training seconds and encode throughput over the corpus (see module doc)."""
    from router_pipelines.data.packing import pack_documents
    from router_pipelines.data.prepare import example_text, split_examples
    from router_pipelines.data.sampling import TRAIN
    from router_pipelines.data.tokenizer import train_bpe_tokenizer
    from router_pipelines.pipelines.data_processing import nodes

    with tempfile.TemporaryDirectory() as cache_dir:
        params = data_params(cache_dir, max_records)
        corpus_split = nodes.split_corpus(nodes.ingest_corpus(params), params)
        train_texts = [example_text(e) for e in split_examples(corpus_split, TRAIN)]
    train_times, tokenizer = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        tokenizer = train_bpe_tokenizer(
            train_texts, vocab_size, params["tokenizer"]["min_frequency"]
        )
        train_times.append(time.perf_counter() - started)
    texts = [json.loads(line)["text"] for line in RAW_PATH.read_text().splitlines() if line]
    if max_records is not None:
        texts = texts[:max_records]
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    n_tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    batches = [texts[i : i + 1024] for i in range(0, len(texts), 1024)]  # as pack_documents
    encode: dict[str, dict[str, float]] = {}
    try:
        for parallel in ("true", "false"):
            os.environ["TOKENIZERS_PARALLELISM"] = parallel  # read by the Rust library per call
            samples = common.time_calls(
                lambda: [tokenizer(b, add_special_tokens=False) for b in batches], repeats, warmup=1
            )
            pack = common.time_calls(
                lambda: pack_documents(tokenizer, texts, 256), repeats, warmup=0
            )
            encode[parallel] = {"encode": common.summarize(samples), "pack": common.summarize(pack)}
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous
    return {
        "train": common.summarize(train_times),
        "train_texts": len(train_texts),
        "train_bytes": sum(len(t.encode("utf-8")) for t in train_texts),
        "vocab": len(tokenizer),
        "texts": len(texts),
        "bytes": n_bytes,
        "tokens": n_tokens,
        "encode": encode,
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(run[key] for run in runs), 3)


def result_rows(nodes_runs, kedro_runs, tok) -> list[dict[str, Any]]:
    """Table rows of the three parts (each row names its ``table``)."""
    rows = []
    for state, runs in nodes_runs.items():
        rows.append(
            {
                "table": "data_processing nodes, one fresh process per run (medians, seconds)",
                "cache": state,
                **{f"{node}_s": _median(runs, f"{node}_s") for node in NODES},
                "nodes_s": _median(runs, "nodes_s"),
                "nodes_iqr_s": round(common.summarize([r["nodes_s"] for r in runs])["iqr"], 3),
                "import_s": _median(runs, "import_s"),
                "process_s": _median(runs, "process_s"),
                "runs": len(runs),
            }
        )
    for state, seconds in kedro_runs.items():
        stats = common.summarize(seconds)
        rows.append(
            {
                "table": "`kedro run --pipelines=data_processing` and `kedro registry list` "
                "wall time (seconds)",
                "command": state if state == "registry list" else f"run, {state} cache",
                "wall_s": round(stats["median"], 2),
                "iqr_s": round(stats["iqr"], 2),
                "runs": stats["n"],
            }
        )
    table = "tokenizer (medians)"
    rows.append(
        {
            "table": table,
            "what": f"BPE training, vocab {tok['vocab']}, {tok['train_texts']} train texts",
            "seconds": round(tok["train"]["median"], 3),
            "iqr_s": round(tok["train"]["iqr"], 3),
            "MB_per_s": round(tok["train_bytes"] / tok["train"]["median"] / 1e6, 3),
        }
    )
    for parallel, timings in tok["encode"].items():
        for kind, label in (("encode", "batch encode"), ("pack", "pack_documents seq_len 256")):
            stats = timings[kind]
            rows.append(
                {
                    "table": table,
                    "what": f"{label}, {tok['texts']} texts, TOKENIZERS_PARALLELISM={parallel}",
                    "seconds": round(stats["median"], 3),
                    "iqr_s": round(stats["iqr"], 3),
                    "tokens_per_s": round(tok["tokens"] / stats["median"]),
                    "MB_per_s": round(tok["bytes"] / stats["median"] / 1e6, 3),
                }
            )
    return rows


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="cold+warm node runs")
    parser.add_argument("--kedro-repeats", type=int, default=2, help="cold+warm kedro runs")
    parser.add_argument("--tokenizer-repeats", type=int, default=3)
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--max-records", type=int, default=None, help="subsample the corpus")
    parser.add_argument("--worker", action="store_true", help=argparse_hidden())
    parser.add_argument("--cache-dir", default=None, help=argparse_hidden())
    args = parser.parse_args()
    if args.worker:
        worker(args.cache_dir, args.max_records)
        return
    if args.quick:
        args.repeats, args.kedro_repeats, args.tokenizer_repeats = 1, 0, 1
        args.max_records = args.max_records or 200
    started = time.perf_counter()
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    nodes_runs = bench_nodes(args.repeats, args.max_records)
    kedro_runs = bench_kedro(args.kedro_repeats, args.max_records) if args.kedro_repeats else {}
    tok = bench_tokenizer(args.tokenizer_repeats, args.max_records, args.vocab_size)

    cold, warm = _median(nodes_runs["cold"], "nodes_s"), _median(nodes_runs["warm"], "nodes_s")
    targets = [
        common.target(
            "data_processing nodes, warm / cold (imports excluded)",
            f"<= {WARM_TARGET:.0%}",
            f"{warm / cold:.1%} ({warm:.2f} s / {cold:.2f} s)",
            warm / cold <= WARM_TARGET,
        )
    ]
    if kedro_runs:
        kedro_cold = statistics.median(kedro_runs["cold"])
        kedro_warm = statistics.median(kedro_runs["warm"])
        targets.append(
            common.target(
                "`kedro run --pipelines=data_processing`, warm / cold (whole command)",
                f"<= {WARM_TARGET:.0%}",
                f"{kedro_warm / kedro_cold:.1%} ({kedro_warm:.1f} s / {kedro_cold:.1f} s)",
                kedro_warm / kedro_cold <= WARM_TARGET,
            )
        )
        targets.append(
            common.target(
                "`kedro run --pipelines=data_processing` on a warm cache (whole command)",
                f"< {WARM_RUN_TARGET_S:.0f} s",
                f"{kedro_warm:.1f} s",
                kedro_warm < WARM_RUN_TARGET_S,
            )
        )
    tokenize_ratio = _median(nodes_runs["warm"], "tokenize_corpus_s") / _median(
        nodes_runs["cold"], "tokenize_corpus_s"
    )
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Data processing: cold vs warm token cache, and tokenizer throughput",
        machine=machine,
        config={
            "corpus": str(RAW_PATH.relative_to(common.PROJECT_ROOT)),
            "corpus_bytes": RAW_PATH.stat().st_size,
            "texts": tok["texts"],
            "corpus_tokens": tok["tokens"],
            "parameters": "conf/base/parameters_data_processing.yml, cache_dir in a temp folder",
            "max_records": args.max_records,
            "seq_len": data_params("tmp", None)["seq_len"],
            "vocab_size": args.vocab_size,
            "node_repeats": args.repeats,
            "kedro_repeats": args.kedro_repeats,
            "tokenizer_repeats": args.tokenizer_repeats,
            "quick": args.quick,
        },
        results=result_rows(nodes_runs, kedro_runs, tok),
        targets=targets,
        notes=[
            "Nodes: every run is a new interpreter; import_s is the import of the node module "
            "(pandas, transformers, tokenizers...), process_s the subprocess's whole wall time; "
            "nodes_s = ingest + split + tokenize, without imports. The warm run reuses the cache "
            "the cold run of the same repeat wrote; ingestion and the split are never cached.",
            f"tokenize_corpus alone, warm / cold: {tokenize_ratio:.1%}.",
            "kedro run: the whole command, cold then warm in the same project copy, MLflow on a "
            "sqlite file created before the first run (so no run pays its schema migrations); "
            "it includes interpreter, Kedro, kedro-mlflow and MLflow start-up and the catalog "
            "saves (tokenizer folder, data report artifact).",
            "Tokenizer: BPE training on the train split (as the pipeline); encoding is the "
            "whole corpus in batches of 1024 texts, as pack_documents does; tokens are counted "
            "without special tokens; MB = 10^6 bytes of UTF-8 text.",
            "Start-up before issue 7's changes (commit d604903, same machine, 2 cores, "
            "measured with /usr/bin/time): `kedro registry list` 7.8-8.6 s, a warm "
            "`kedro run --pipelines=data_processing` 9.3 s (16.8 s in the earlier benchmark, "
            "under load). python -X importtime showed torch, transformers and accelerate "
            "imported by the pipeline modules (2.6 s before any node) and torch again through "
            "the model datasets and AutoTokenizer; they are now imported by the nodes that use "
            "them. What is left of a warm run is mostly Kedro, kedro-mlflow and MLflow "
            "(about 2 s for the mlflow import that kedro-mlflow's CLI plugin does).",
        ],
        seconds=time.perf_counter() - started,
    )


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
