"""Streaming ingest of a generated ~1 GB JSONL into the memory-mapped token store, and the cost
of reading that store during training.

1. Corpus: a deterministic synthetic English-like C4-style JSONL (``text``, ``url``,
   ``timestamp``; Zipf-distributed pseudo-words and common English words in sentences, a few
   non-ASCII characters), written to a temp folder and deleted at the end.
2. Ingest: the three ``data_processing`` nodes (``ingest_corpus`` -> ``split_corpus`` ->
   ``tokenize_corpus``) with ``conf/base/parameters_data_processing.yml`` (byte-level BPE of
   8192 trained on the train split, seq_len 256), ``data.raw_path`` = the corpus and a fresh
   ``cache_dir``, for all records and for a ``max_records`` subsample, with ``num_proc`` 1 and
   2. Each run is a fresh process; a sampler in this process reads the RSS (and PSS) of that
   process and all its children (the tokenizing workers) every 0.2 s and keeps the peak of the
   sum; the run also reports its own ``ru_maxrss``.
3. Data loading: seconds per optimizer step of the ``tiny`` preset (batch 8 x 256, CPU fp32,
   AdamW, 1 torch thread) with the engine's ``build_train_dataloader`` over the memory-mapped
   train store of run 2 (random rows across the whole store, its pages dropped from the page
   cache first) against a loader over the same rows held in memory as one int64 tensor, in
   alternating rounds; plus the loader alone (ms per batch, no model).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

NAME = "token_store"
RSS_TARGET_MB = 2048  # peak RSS of the whole process tree while ingesting 1 GB
LOADING_TARGET = 0.02  # data loading / training step
RESULT_MARKER = "BENCH_TOKEN_STORE_RESULT "
PARAMS_FILE = common.PROJECT_ROOT / "conf/base/parameters_data_processing.yml"
COMMON_WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "that",
    "for",
    "it",
    "as",
    "with",
    "be",
    "on",
    "by",
    "at",
    "this",
    "from",
    "or",
    "an",
    "are",
    "which",
    "have",
    "not",
    "but",
    "had",
    "his",
    "they",
    "you",
    "were",
    "their",
    "one",
    "all",
    "we",
    "can",
    "her",
    "has",
    "there",
    "been",
    "if",
    "more",
    "when",
    "will",
    "would",
    "who",
    "so",
    "no",
    "time",
    "about",
    "into",
    "than",
    "its",
    "only",
    "other",
    "new",
    "some",
    "could",
    "these",
    "two",
    "may",
    "first",
]


def generate_corpus(path: Path, target_bytes: int, seed: int) -> dict[str, Any]:
    """Write a deterministic English-like JSONL of about ``target_bytes`` to ``path``."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    syllables = [
        "ka",
        "ri",
        "to",
        "men",
        "sa",
        "lo",
        "ne",
        "vi",
        "da",
        "por",
        "tes",
        "ul",
        "an",
        "ex",
        "gra",
        "phi",
        "co",
        "qua",
        "str",
        "ing",
        "er",
        "ed",
        "ly",
    ]
    invented = {"".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(6000)} - set(
        COMMON_WORDS
    )
    words = np.array(COMMON_WORDS + sorted(invented) + ["café", "naïve", "über", "—", "€5"])
    weights = 1.0 / np.arange(1, len(words) + 1) ** 1.1  # Zipf-like word frequencies
    weights /= weights.sum()
    marks = np.array([".", ".", ".", "?", "!", ",", ";"])
    pool = []
    for _ in range(40_000):  # sentences; documents draw from this pool
        chosen = rng.choice(words, size=int(rng.integers(5, 26)), p=weights)
        pool.append(" ".join(chosen).capitalize() + str(rng.choice(marks)))
    records = 0
    with path.open("w", encoding="utf-8") as handle:
        while handle.tell() < target_bytes:
            picks = rng.integers(0, len(pool), size=int(rng.integers(8, 60)))
            text = " ".join(pool[i] for i in picks)
            record = {
                "text": text,
                "url": f"https://example.org/docs/{records}",
                "timestamp": "2024-01-01T00:00:00Z",
            }
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            records += 1
    return {
        "records": records,
        "bytes": path.stat().st_size,
        "seconds": time.perf_counter() - started,
    }


def ingest_worker(raw_path: str, cache_dir: str, num_proc: int, max_records: int | None) -> None:
    """One fresh-process run of the three nodes; prints its timings as one JSON line."""
    import resource

    import yaml

    from router_pipelines.pipelines.data_processing import nodes

    params = yaml.safe_load(PARAMS_FILE.read_text())["data"]
    params.update(
        raw_path=raw_path, cache_dir=cache_dir, num_proc=num_proc, max_records=max_records
    )
    started = time.perf_counter()
    corpus = nodes.ingest_corpus(params)
    ingest_s = time.perf_counter() - started
    split = nodes.split_corpus(corpus, params)
    split_s = time.perf_counter() - started - ingest_s
    tokenizer, train, validation, report = nodes.tokenize_corpus(split, params)
    total_s = time.perf_counter() - started
    meta = json.loads((Path(report["cache_path"]) / "meta.json").read_text())
    tokens = report["train_tokens"] + report["validation_tokens"]
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    result = {
        "records": corpus.records,
        "train_records": report["train_records"],
        "ingest_s": ingest_s,
        "split_s": split_s,
        "bpe_s": meta["tokenizer_seconds"],
        "tokenize_pass_s": report["tokenize_seconds"],
        "total_s": total_s,
        "tokens": tokens,
        "train_rows": len(train),
        "store_mb": (train.input_ids.nbytes + validation.input_ids.nbytes) / 1e6,
        "cache_path": report["cache_path"],
        "maxrss_main_mb": own,
        "maxrss_worker_mb": workers,
    }
    print(RESULT_MARKER + json.dumps(result), flush=True)


def run_ingest(
    raw_path: Path, cache_dir: Path, num_proc: int, max_records: int | None
) -> dict[str, Any]:
    """Run :func:`ingest_worker` in a new process and sample its process tree's memory."""
    import psutil

    command = [sys.executable, __file__, "--worker", str(raw_path), str(cache_dir), str(num_proc)]
    command.append(str(max_records or 0))
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(command, stdout=out, stderr=err, text=True)
        peaks = {"rss": 0, "pss": 0}
        done = threading.Event()

        def sample() -> None:
            root = psutil.Process(proc.pid)
            while not done.is_set():
                try:
                    tree = [root, *root.children(recursive=True)]
                    rss = pss = 0
                    for member in tree:
                        info = member.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                    peaks["rss"], peaks["pss"] = max(peaks["rss"], rss), max(peaks["pss"], pss)
                except psutil.Error:
                    pass  # a worker ended between listing and reading
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = proc.wait()
        done.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if code != 0:
        raise RuntimeError(f"ingest worker failed ({code}):\n{stderr[-3000:]}")
    line = next(x for x in stdout.splitlines() if x.startswith(RESULT_MARKER))
    result = json.loads(line[len(RESULT_MARKER) :])
    return {
        **result,
        "peak_rss_tree_mb": peaks["rss"] / 2**20,
        "peak_pss_tree_mb": peaks["pss"] / 2**20,
    }


def drop_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of every file under ``folder`` (no root)."""
    for file in folder.rglob("*.npy"):
        with file.open("rb") as handle:
            os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def bench_loading(store: Path, steps: int, rounds: int, seed: int) -> dict[str, Any]:
    """Step time with the memory-mapped store vs the same rows in memory (see module doc)."""
    import torch
    from torch.utils.data import DataLoader, Dataset
    from transformers import AutoModelForCausalLM

    from router_pipelines.data.token_store import TokenBlocks
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.models.presets import ModelConfig, transformers_config
    from router_pipelines.training.dataloaders import EpochSeededSampler, build_train_dataloader

    blocks = TokenBlocks.open(store / "train")
    batch, seq_len = 8, blocks.seq_len
    order = list(EpochSeededSampler(len(blocks), seed))[: steps * batch]
    rows = torch.from_numpy(
        np.stack([blocks.gather(order)[k] for k in ("input_ids", "labels", "attention_mask")], 1)
    )

    class InMemory(Dataset):  # the pre-store layout: one (N, 3, T) int64 tensor
        def __len__(self) -> int:
            return rows.shape[0]

        def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
            return {"input_ids": rows[i, 0], "labels": rows[i, 1], "attention_mask": rows[i, 2]}

    def loaders() -> dict[str, Any]:
        mapped, _ = build_train_dataloader(
            TokenBlockDataset(TokenBlocks.open(store / "train")), batch, seed, 0
        )
        return {"memmap": mapped, "memory": DataLoader(InMemory(), batch_size=batch, shuffle=False)}

    special = {"eos_token_id": 0, "bos_token_id": 1, "pad_token_id": 2}
    vocab = int(blocks.input_ids[: min(len(blocks), 1000)].max()) + 1
    hf_config = transformers_config(ModelConfig(preset="tiny"), max(vocab, 8192), special)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_steps(loader) -> list[float]:
        times, it = [], iter(loader)
        for _ in range(steps):
            started = time.perf_counter()
            data = next(it)
            model(**data).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - started)
        return times[2:]  # allocator warm-up

    def fetch_only(loader) -> float:
        started = time.perf_counter()
        for _, _ in zip(range(steps), loader, strict=False):
            pass
        return (time.perf_counter() - started) / steps

    step_ms: dict[str, list[float]] = {"memmap": [], "memory": []}
    fetch_ms: dict[str, list[float]] = {"memmap": [], "memory": []}
    ratios = []
    for round_ in range(rounds):
        medians = {}
        for kind in ("memmap", "memory") if round_ % 2 == 0 else ("memory", "memmap"):
            drop_page_cache(store)
            medians[kind] = statistics.median(train_steps(loaders()[kind])) * 1e3
            step_ms[kind].append(medians[kind])
        ratios.append(medians["memmap"] / medians["memory"] - 1)
        for kind in ("memmap", "memory"):
            drop_page_cache(store)
            fetch_ms[kind].append(fetch_only(loaders()[kind]) * 1e3)
    return {
        "rows": len(blocks),
        "store_mb": blocks.input_ids.nbytes / 1e6,
        "seq_len": seq_len,
        "step_ms": {k: statistics.median(v) for k, v in step_ms.items()},
        "fetch_ms": {k: statistics.median(v) for k, v in fetch_ms.items()},
        "paired_overhead": statistics.median(ratios),
    }


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--corpus-mb", type=float, default=1000.0, help="generated JSONL size")
    parser.add_argument("--subsample", type=float, default=0.1, help="max_records share")
    parser.add_argument("--steps", type=int, default=40, help="training steps per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating loader rounds")
    parser.add_argument("--worker", nargs=4, default=None, help=__import__("argparse").SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        raw, cache, num_proc, max_records = args.worker
        ingest_worker(raw, cache, int(num_proc), int(max_records) or None)
        return
    if args.quick:
        args.corpus_mb, args.steps, args.rounds = 8.0, 8, 1
    started = time.perf_counter()
    threads = common.set_threads(args.threads or 1)
    machine = common.machine_info(threads)
    rows, runs = [], {}
    with tempfile.TemporaryDirectory(prefix="bench_token_store_") as tmp:
        corpus_path = Path(tmp) / "corpus.jsonl"
        corpus = generate_corpus(corpus_path, int(args.corpus_mb * 1e6), args.seed)
        print(
            f"corpus: {corpus['bytes'] / 1e6:.0f} MB, {corpus['records']} records, "
            f"{corpus['seconds']:.0f} s",
            flush=True,
        )
        subsample = max(2, int(corpus["records"] * args.subsample))
        for max_records in (None, subsample):
            for num_proc in (1, 2):
                cache = Path(tmp) / f"cache-{max_records}-{num_proc}"
                run = run_ingest(corpus_path, cache, num_proc, max_records)
                runs[(max_records, num_proc)] = run
                mb = corpus["bytes"] / 1e6
                rows.append(
                    {
                        "table": "ingest -> subsample -> tokenize (three nodes, fresh process each)",
                        "records": "all" if max_records is None else f"max_records={max_records}",
                        "num_proc": num_proc,
                        "wall_s": round(run["total_s"], 1),
                        "ingest_s": round(run["ingest_s"], 1),
                        "bpe_s": round(run["bpe_s"], 1),
                        "tokenize_pass_s": round(run["tokenize_pass_s"], 1),
                        "MB_per_s": round(mb / run["total_s"], 2),
                        "ingest_MB_per_s": round(mb / run["ingest_s"], 1),
                        "tokenize_MB_per_s": round(mb / run["tokenize_pass_s"], 2),
                        "tokens_per_s": round(run["tokens"] / run["tokenize_pass_s"]),
                        "tokens": run["tokens"],
                        "peak_rss_tree_mb": round(run["peak_rss_tree_mb"]),
                        "peak_pss_tree_mb": round(run["peak_pss_tree_mb"]),
                        "maxrss_main_mb": round(run["maxrss_main_mb"]),
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
                if (max_records, num_proc) != (None, 2):
                    subprocess.run(["rm", "-rf", str(cache)], check=True)
        corpus_path.unlink()
        store = Path(runs[(None, 2)]["cache_path"])
        loading = bench_loading(store, args.steps, args.rounds, args.seed)
    table = (
        f"tiny preset, batch 8 x {loading['seq_len']}, {args.steps} steps x {args.rounds} rounds"
    )
    for kind, label in (
        ("memmap", "memory-mapped store (cold page cache)"),
        ("memory", "in-memory int64 tensor"),
    ):
        rows.append(
            {
                "table": f"data loading: {table}",
                "loader": label,
                "step_ms": round(loading["step_ms"][kind], 2),
                "fetch_ms_per_batch": round(loading["fetch_ms"][kind], 3),
                "fetch_pct_of_step": round(
                    100 * loading["fetch_ms"][kind] / loading["step_ms"]["memory"], 3
                ),
            }
        )
    peak = max(r["peak_rss_tree_mb"] for r in runs.values())
    fetch_share = loading["fetch_ms"]["memmap"] / loading["step_ms"]["memory"]
    added = (loading["fetch_ms"]["memmap"] - loading["fetch_ms"]["memory"]) / loading["step_ms"][
        "memory"
    ]
    targets = [
        common.target(
            f"peak RSS of the process tree, {corpus['bytes'] / 1e9:.2f} GB JSONL",
            f"< {RSS_TARGET_MB} MB",
            f"{peak:.0f} MB",
            peak < RSS_TARGET_MB,
        ),
        common.target(
            "data loading from the store / training step",
            f"< {LOADING_TARGET:.0%}",
            f"{fetch_share:.2%} ({loading['fetch_ms']['memmap']:.2f} ms / "
            f"{loading['step_ms']['memory']:.0f} ms)",
            fetch_share < LOADING_TARGET,
        ),
    ]
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Token store: streaming ingest of a 1 GB JSONL, and data loading from the memory map",
        machine=machine,
        config={
            "corpus_mb": round(corpus["bytes"] / 1e6, 1),
            "corpus_records": corpus["records"],
            "corpus_generation_s": round(corpus["seconds"], 1),
            "parameters": "conf/base/parameters_data_processing.yml (BPE 8192, seq_len 256)",
            "subsample_records": subsample,
            "store_rows": loading["rows"],
            "store_mb": round(loading["store_mb"], 1),
            "loader_steps": args.steps,
            "loader_rounds": args.rounds,
            "quick": args.quick,
        },
        results=rows,
        targets=targets,
        notes=[
            "wall_s is ingest_corpus + split_corpus + tokenize_corpus in one fresh process "
            "(imports excluded); tokenize_corpus = BPE training on the train split (bpe_s, one "
            "streamed pass) + the tokenize-and-pack pass into the store (tokenize_pass_s, which "
            "re-parses the whole file). MB_per_s divide the corpus size (10^6 bytes) by those "
            "times; tokens_per_s counts the tokens stored over tokenize_pass_s.",
            "peak_rss_tree_mb: the peak of the summed RSS of the run's process and its "
            "tokenizing workers, sampled every 0.2 s (shared library pages counted once per "
            "process: an over-estimate); peak_pss_tree_mb shares them out; maxrss_main_mb is "
            "the run's own ru_maxrss.",
            "num_proc 1 tokenizes in-process with the tokenizers library's own thread pool "
            "(TOKENIZERS_PARALLELISM unset); num_proc 2 spawns two single-threaded workers; "
            "the parent parses JSON and packs in both cases, on the same 2 cores.",
            f"Data loading: fetch_ms_per_batch is the loader alone; the memory-mapped store's "
            f"pages were dropped from the page cache (posix_fadvise) before each loader, so rows "
            f"come from disk. Paired step-time difference memmap vs memory: "
            f"{loading['paired_overhead']:+.2%} (noise level); fetch time added over the "
            f"in-memory loader: {added:+.3%} of a step.",
        ],
        seconds=time.perf_counter() - started,
    )


if __name__ == "__main__":
    main()
