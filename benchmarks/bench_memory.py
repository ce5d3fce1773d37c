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

import tempfile
import time
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

NAME = "memory"
CONF = common.PROJECT_ROOT / "conf" / "base"
LORA_TARGETS = ["c_attn", "c_proj", "c_fc"]
NO_SAVING = {
    "save_steps": None,
    "save_at_end": False,
    "save_best_model": False,
    "load_best_model_at_end": False,
    "progress_bar": False,
}


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


def run(args) -> None:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
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
        "lora_only": (None, LoraSettings(True, rank, 2 * rank, 0.0, LORA_TARGETS)),
        "memory": (params.adapter, LoraSettings()),
        "memory_lora": (params.adapter, LoraSettings(True, 8, 16, 0.0, None)),
    }
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
    by_name = {row["model"]: row for row in rows}
    memory, lora_only = by_name["memory"], by_name["lora_only"]
    step_ratio = memory["step_ms"] / lora_only["step_ms"]
    targets = [
        common.target(
            "memory vs LoRA-only (equal trainable params): chat validation loss",
            f"< {lora_only['chat_loss']}",
            memory["chat_loss"],
            memory["chat_loss"] < lora_only["chat_loss"],
        ),
        common.target(
            "utilisation entropy H(f)/log C (chat validation)",
            ">= 0.9",
            memory["utilisation_entropy"],
            memory["utilisation_entropy"] >= 0.9,
        ),
        common.target("dead chapters", "0", memory["dead_chapters"], memory["dead_chapters"] == 0),
        common.target(
            "memory step time / LoRA-only step time",
            "<= 1.15",
            round(step_ratio, 3),
            step_ratio <= 1.15,
        ),
    ]
    notes = [
        "All variants train the same frozen base on the same chat batches (seed, data order), "
        f"{args.steps} steps of batch {training_values['batch_size']}, with the learning rates of "
        "conf/base/parameters_memory.yml (memory_lr for the adapter, lora_lr for LoRA).",
        f"lora_only: rank {rank} on {LORA_TARGETS}, chosen so its trainable parameters match the "
        f"memory adapter's ({memory_budget}) as closely as a whole rank allows.",
        "forgetting = text validation loss minus the untrained base's (the base is frozen, so "
        "it comes only from the adapter / LoRA).",
        f"Losses on the first {args.eval_batches} validation batches of 8 rows; bits per byte "
        "counts the UTF-8 bytes of the predicted tokens (chat: assistant tokens only).",
        "step_ms: mean wall time of an optimizer step over the run (evaluation steps excluded), "
        "under the load average recorded in the machine block.",
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
            "seq_len": args.seq_len,
            "chat_train_rows": report["train_rows"],
            "chat_validation_rows": report["validation_rows"],
            "num_chapters": params.adapter.num_chapters,
            "chapter_size": params.adapter.chapter_size,
            "top_k": params.adapter.top_k,
            "memory_layers": params.adapter.memory_layers,
            "eval_batches": args.eval_batches,
            "quick": args.quick,
        },
        results=rows,
        targets=targets,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--eval-batches", type=int, default=10)
    args = parser.parse_args()
    if args.quick:
        args.base_steps, args.steps, args.eval_batches = 10, 6, 2
    run(args)


if __name__ == "__main__":
    main()
