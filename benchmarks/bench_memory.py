"""Mixture-of-Chapters memory adapter vs LoRA at equal trainable parameters (seed 002).

On the embedded defaults (text corpus ``data/01_raw/python_docs.jsonl`` through the data layer
with ``conf/base/parameters_data_processing.yml``; chat corpus
``data/01_raw/python_docs_chat.jsonl``, instruction mode, tokenized with the base's tokenizer):

1. a ``tiny`` GPT-2 base LM, trained by the ``pretrain`` node for ``--base-steps`` steps;
2. on that frozen base, each for ``--steps`` optimizer steps on the same chat batches (same
   seed, same data order), with the family's training code (``train_memory_model``):
   - ``lora_only``: LoRA on c_attn, c_proj, c_fc with the rank that matches the memory
     adapter's trainable parameters most closely;
   - ``memory``: the adapter of ``conf/base/parameters_memory.yml`` (frozen base);
   - ``memory_lora``: the adapter + LoRA r=8 on c_attn;
   - ``base``: the base, untrained, as the reference;
3. validation loss and bits per byte on the chat and the text split (``forgetting`` = text
   loss minus the base's), utilisation of the chat validation set, and the mean optimizer-step
   time (the family's ``step_time_s``, evaluation steps excluded).

Targets: memory beats LoRA-only on the chat validation loss; utilisation entropy >= 0.9 with no
dead chapter; memory's step time <= 1.15x LoRA-only's (both train a frozen base).

    .venv/bin/python benchmarks/bench_memory.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_memory.py --quick    # < 1 min smoke
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from typing import Any

import common
import torch
import transformers
import yaml

from router_pipelines.data.tokenizer import token_byte_lengths
from router_pipelines.data.torch_dataset import TokenBlockDataset
from router_pipelines.evaluation import evaluate_language_model
from router_pipelines.families.memory import count_chapter_picks, utilisation
from router_pipelines.models.memory import LoraSettings, MemoryAdapter
from router_pipelines.pipelines.data_processing.nodes import (
    ingest_corpus,
    split_corpus,
    tokenize_corpus,
)
from router_pipelines.pipelines.memory.config import parse_memory_params
from router_pipelines.pipelines.memory.nodes import tokenize_chat_corpus
from router_pipelines.pipelines.memory.training import build_memory_model, train_memory_model
from router_pipelines.pipelines.pretrain.nodes import train_base_model
from router_pipelines.training.config import NOTHING_SAVED

NAME = "memory"
CONF = common.PROJECT_ROOT / "conf" / "base"
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
NO_SAVING = NOTHING_SAVED  # nothing written; each training below sets its own eval_steps


def load_params(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())


def _absolute(group: dict[str, Any]) -> dict[str, Any]:
    group = dict(group)
    for key in ("raw_path", "cache_dir"):
        group[key] = str(common.PROJECT_ROOT / group[key])
    return group


def text_tokens(args) -> tuple[Any, Any, Any]:
    data = _absolute(load_params("data_processing")["data"])
    data["seq_len"] = args.seq_len
    tokenizer, train, validation, _ = tokenize_corpus(split_corpus(ingest_corpus(data), data), data)
    return tokenizer, train, validation


def train_base(tokenizer, train, validation, args, output_dir: str):
    """The ``tiny`` base LM: loaded from ``--base-dir`` when it holds one trained for the same
    ``--base-steps`` (so several seeds / reruns share one base), else trained (and saved there)."""
    from pathlib import Path

    from router_pipelines.models.bundle import load_bundle, save_bundle

    saved = Path(args.base_dir) if args.base_dir else None
    if saved is not None and (saved / "router_pipelines.json").is_file():
        bundle = load_bundle(saved)
        if bundle.metadata.get("bench_base_steps") == args.base_steps:
            print(f"base: reused {saved}", flush=True)
            return bundle
    params = load_params("pretrain")["pretrain"]
    params["training"].update(
        NO_SAVING,
        output_dir=output_dir,
        max_steps=args.base_steps,
        eval_steps=None,
        warmup_steps=min(50, args.base_steps // 10),
    )
    bundle, summary, _, _ = train_base_model(
        train, validation, tokenizer, None, None, params["model"], params["training"],
        params["lr_finder"], params["register"],
    )  # fmt: skip
    print(f"base: {summary['train_loss']:.3f} train loss, {summary['seconds']} s", flush=True)
    if saved is not None:
        bundle.metadata["bench_base_steps"] = args.base_steps
        save_bundle(bundle, saved)
    return bundle


def chat_tokens(base, args):
    memory = load_params("memory")["memory"]
    chat = _absolute(memory["chat_data"])
    chat["seq_len"] = args.seq_len
    split = split_corpus(ingest_corpus(chat), chat)
    train, validation, report = tokenize_chat_corpus(split, base, chat)
    return train, validation, report


def lora_rank_for(base, budget: int) -> int:
    """The LoRA rank on LORA_TARGETS whose trainable parameters come closest to ``budget``."""
    one = build_memory_model(
        base.model, None, LoraSettings(True, 1, 2, 0.0, LORA_TARGETS), False, 0
    )
    per_rank = sum(p.numel() for p in one.parameters() if p.requires_grad)
    return max(1, round(budget / per_rank))


def evaluate(model, sets: dict[str, Any], token_bytes, args) -> dict[str, float]:
    row = {}
    for split, tokens in sets.items():
        metrics = evaluate_language_model(
            model, TokenBlockDataset(tokens), batch_size=8, max_batches=args.eval_batches,
            token_bytes=token_bytes,
        )  # fmt: skip
        row[f"{split}_loss"] = round(metrics["loss"], 4)
        row[f"{split}_bits_per_byte"] = round(metrics["bits_per_byte"], 4)
    return row


def measure(args) -> dict[str, Any]:
    """One seed: the base row and one row per variant, plus what the notes need."""
    tokenizer, text_train, text_validation = text_tokens(args)
    workdir = tempfile.mkdtemp(prefix="bench-memory-")
    base = train_base(tokenizer, text_train, text_validation, args, f"{workdir}/base")
    chat_train, chat_validation, report = chat_tokens(base, args)
    params = parse_memory_params(load_params("memory")["memory"] | {"training": {}})
    memory_params = load_params("memory")["memory"]
    training_values = {
        key: value
        for key, value in memory_params["training"].items()
        if key not in ("output_dir", "resume_from_checkpoint")
    }
    eval_sets = {"chat": TokenBlockDataset(chat_validation)}
    sets = {"chat": chat_validation, "text": text_validation}
    token_bytes = token_byte_lengths(tokenizer)
    base_row = {
        "model": "base",
        "trainable_params": 0,
        **evaluate(base.model, sets, token_bytes, args),
    }
    probe = build_memory_model(base.model, params.adapter, LoraSettings(), False, args.seed)
    memory_budget = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    rank = lora_rank_for(base, memory_budget)
    variants = {
        "memory": (params.adapter, LoraSettings()),
        "lora_only": (None, LoraSettings(True, rank, 2 * rank, 0.0, LORA_TARGETS)),
        "memory_lora": (params.adapter, LoraSettings(True, 8, 16, 0.0, None)),
    }
    if args.mean_router and params.adapter.router_input != "mean":  # the seed's router
        variants["memory_mean_router"] = (
            replace(params.adapter, router_input="mean"),
            LoraSettings(),
        )
    rows = [base_row]
    for name, (adapter, lora) in variants.items():
        training = parse_memory_params(
            {
                "training": training_values
                | NO_SAVING
                | {
                    "output_dir": f"{workdir}/{name}",
                    "max_steps": args.steps,
                    "eval_steps": args.steps,
                    "eval_max_batches": args.eval_batches,
                    "warmup_steps": min(20, args.steps // 10),
                    "seed": args.seed,
                }
            }
        ).training
        model = build_memory_model(base.model, adapter, lora, False, args.seed)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        result, timer = train_memory_model(
            model, training, TokenBlockDataset(chat_train), eval_sets, lora=lora.enabled
        )
        trained = result.model.eval()
        row = {
            "model": name,
            "trainable_params": trainable,
            "lora_rank": lora.r if lora.enabled else None,
        }
        row |= evaluate(trained, sets, token_bytes, args)
        row["forgetting"] = round(row["text_loss"] - base_row["text_loss"], 4)
        row["step_ms"] = round(1000 * (timer.mean_step_time or float("nan")), 1)
        if isinstance(trained, MemoryAdapter):
            loader = torch.utils.data.DataLoader(TokenBlockDataset(chat_validation), batch_size=8)
            usage = utilisation(count_chapter_picks(trained, loader, args.eval_batches))
            row |= {
                "utilisation_entropy": round(usage["utilisation_entropy"], 4),
                "dead_chapters": usage["dead_chapters"],
                "top1_share": round(usage["top1_share"], 4),
            }
        rows.append(row)
        print(row, flush=True)
    return {
        "rows": rows,
        "rank": rank,
        "memory_budget": memory_budget,
        "batch_size": training_values["batch_size"],
        "report": report,
        "adapter": params.adapter,
    }


def mean_rows(per_seed: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One row per model: the mean over seeds of every number (ints stay ints when equal)."""
    merged = []
    for rows in zip(*per_seed, strict=True):
        row = {"table": f"mean over {len(per_seed)} seed(s)"}
        for key, value in rows[0].items():
            values = [r.get(key) for r in rows]
            numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
            row[key] = (
                round(sum(values) / len(values), 4) if numbers and len(set(values)) > 1 else value
            )
        merged.append(row)
    return merged


def run(args) -> None:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    seeds = args.seeds or [args.seed]
    if len(seeds) == 1:
        args.seed = seeds[0]
        runs = [measure(args)]
    else:
        runs = seeds_in_parallel(args, seeds)
    per_seed = [r["rows"] for r in runs]
    first = runs[0]
    rows = mean_rows(per_seed)
    if len(seeds) > 1:
        for seed, seed_rows in zip(seeds, per_seed, strict=True):
            rows += [{"table": f"seed {seed}", **row} for row in seed_rows]
    else:
        rows = [{k: v for k, v in row.items() if k != "table"} for row in rows]
    by_name = {row["model"]: row for row in rows[: len(per_seed[0])]}
    memory, lora_only = by_name["memory"], by_name["lora_only"]
    step_ratio = memory["step_ms"] / lora_only["step_ms"]
    wins = sum(
        {r["model"]: r for r in seed_rows}["memory"]["chat_loss"]
        < {r["model"]: r for r in seed_rows}["lora_only"]["chat_loss"]
        for seed_rows in per_seed
    )
    targets = [
        common.target(
            "memory vs LoRA-only (equal trainable params): chat validation loss, seed mean",
            f"< {lora_only['chat_loss']}",
            f"{memory['chat_loss']} (lower in {wins} of {len(seeds)} seeds)",
            memory["chat_loss"] < lora_only["chat_loss"],
        ),
        common.target(
            "utilisation entropy H(f)/log C (chat validation), seed mean",
            ">= 0.9",
            memory["utilisation_entropy"],
            memory["utilisation_entropy"] >= 0.9,
        ),
        common.target(
            "dead chapters (seed mean)", "0", memory["dead_chapters"], memory["dead_chapters"] == 0
        ),
        common.target(
            "memory step time / LoRA-only step time",
            "<= 1.15",
            round(step_ratio, 3),
            step_ratio <= 1.15,
        ),
    ]
    adapter = first["adapter"]
    notes = [
        "All variants train the same frozen base on the same chat batches (seed, data order), "
        f"{args.steps} steps of batch {first['batch_size']}, with the learning rates of "
        "conf/base/parameters_memory.yml (memory_lr for the adapter, lora_lr for LoRA).",
        f"Seeds {seeds}: the seed sets the adapter / LoRA init and the chat data order; one "
        f"base LM ({args.base_steps} steps, the pretrain config's own seed) serves every seed.",
        f"lora_only: rank {first['rank']} on {LORA_TARGETS}, chosen so its trainable parameters "
        f"match the memory adapter's ({first['memory_budget']}) as closely as a whole rank allows.",
        f"memory: router_input {adapter.router_input!r}, router_noise {adapter.router_noise}; "
        "memory_mean_router (with --mean-router): the same adapter with the seed's router "
        "(plain mean-pool, no standardisation).",
        "forgetting = text validation loss minus the untrained base's (the base is frozen, so "
        "it comes only from the adapter / LoRA).",
        f"Losses on the first {args.eval_batches} validation batches of 8 rows; bits per byte "
        "counts the UTF-8 bytes of the predicted tokens (chat: assistant tokens only).",
        "step_ms: mean wall time of an optimizer step over the run (evaluation steps excluded), "
        "under the load average recorded in the machine block"
        + ("; the seeds ran in parallel, one process each." if len(seeds) > 1 else "."),
    ]
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Memory adapter vs LoRA at equal trainable parameters (chat instruction tuning)",
        machine=machine,
        config={
            "base_preset": "tiny",
            "base_steps": args.base_steps,
            "steps": args.steps,
            "seeds": seeds,
            "seq_len": args.seq_len,
            "chat_train_rows": first["report"]["train_rows"],
            "chat_validation_rows": first["report"]["validation_rows"],
            "num_chapters": adapter.num_chapters,
            "chapter_size": adapter.chapter_size,
            "top_k": adapter.top_k,
            "memory_layers": adapter.memory_layers,
            "router_input": adapter.router_input,
            "eval_batches": args.eval_batches,
            "quick": args.quick,
        },
        results=rows,
        targets=targets,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def seeds_in_parallel(args, seeds: list[int]) -> list[dict[str, Any]]:
    """Each seed in its own process (``--worker``), started together; their measurements."""
    import pickle
    import subprocess
    import sys

    if args.base_dir is None:
        raise SystemExit("--seeds with more than one seed needs --base-dir (one shared base)")
    # the base first, once, so the workers only load it
    tokenizer, text_train, text_validation = text_tokens(args)
    train_base(tokenizer, text_train, text_validation, args, tempfile.mkdtemp())
    workdir = tempfile.mkdtemp(prefix="bench-memory-seeds-")
    passed = [
        *("--base-steps", str(args.base_steps), "--steps", str(args.steps)),
        *("--seq-len", str(args.seq_len), "--eval-batches", str(args.eval_batches)),
        *("--base-dir", str(args.base_dir)),
        *(("--threads", str(args.threads)) if args.threads else ()),
        *(("--mean-router",) if args.mean_router else ()),
    ]
    jobs = []
    for seed in seeds:
        out = f"{workdir}/seed{seed}.pkl"
        command = [sys.executable, __file__, *passed, "--seed", str(seed), "--worker", out]
        jobs.append((subprocess.Popen(command), out))
    results = []
    for job, out in jobs:
        if job.wait() != 0:
            raise SystemExit(f"a seed's worker failed ({job.args})")
        with open(out, "rb") as handle:
            results.append(pickle.load(handle))
    return results


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument(
        "--base-dir", default=None, help="save the trained base here, or reuse the one saved"
    )
    parser.add_argument(
        "--mean-router", action="store_true", help="add the seed's plain mean-pool router"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="e.g. --seeds 0 1")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.base_steps, args.steps, args.eval_batches = 10, 6, 2
    if args.worker:  # one seed of a --seeds run: pickle the measurement for the parent
        import pickle

        transformers.logging.set_verbosity_error()
        common.set_threads(args.threads)
        with open(args.worker, "wb") as handle:
            pickle.dump(measure(args), handle)
        return
    run(args)


if __name__ == "__main__":
    main()
