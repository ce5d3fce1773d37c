"""Memory adapter step time vs LoRA-only at equal trainable parameters, interleaved (seed 002).

``bench_memory.py`` reports the mean optimizer-step time of each variant's training run, but
the variants train one after the other, so a change in the machine's load between runs moves
the ratio. Here every variant takes one training step in turn (round robin, the same chat
batch, the same frozen base), so all of them see the same load; the median over the rounds
is reported.

A step is what the family's training does: forward, the family's loss (CE + router auxiliary
loss for a memory model, CE for LoRA-only), backward, AdamW on the trainable parameters.

    .venv/bin/python benchmarks/bench_memory_step_time.py --base-dir /tmp/bench-memory-base
    .venv/bin/python benchmarks/bench_memory_step_time.py --quick
"""

from __future__ import annotations

import time
from typing import Any

import bench_memory as bm
import common
import torch
import transformers

from router_pipelines.families.memory import make_memory_loss
from router_pipelines.models.memory import LoraSettings
from router_pipelines.pipelines.memory.config import parse_memory_params
from router_pipelines.pipelines.memory.training import build_memory_model
from router_pipelines.training import causal_lm_loss

NAME = "memory_step_time"


def make_step(model: torch.nn.Module, loss_fn: Any, batch: dict[str, torch.Tensor]):
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> None:
        loss, _ = loss_fn(model, batch, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def run(args) -> None:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    tokenizer, text_train, text_validation = bm.text_tokens(args)
    base = bm.train_base(tokenizer, text_train, text_validation, args, "unused")
    chat_train, _, _ = bm.chat_tokens(base, args)
    memory = bm.load_params("memory")["memory"]
    adapter = parse_memory_params({"adapter": memory["adapter"]}).adapter
    batch_size = memory["training"]["batch_size"]
    loader = torch.utils.data.DataLoader(
        bm.TokenBlockDataset(chat_train), batch_size=batch_size, shuffle=False
    )
    batch = next(iter(loader))
    probe = build_memory_model(base.model, adapter, LoraSettings(), False, args.seed)
    budget = sum(p.numel() for p in probe.parameters() if p.requires_grad)
    rank = bm.lora_rank_for(base, budget)
    variants = {
        "lora_only": build_memory_model(
            base.model, None, LoraSettings(True, rank, 2 * rank, 0.0, bm.LORA_TARGETS), False, 0
        ),
        "memory": build_memory_model(base.model, adapter, LoraSettings(), False, args.seed),
        "memory_lora": build_memory_model(
            base.model, adapter, LoraSettings(True, 8, 16, 0.0, None), False, args.seed
        ),
    }
    memory_loss = make_memory_loss()
    steps = {
        name: make_step(model, causal_lm_loss if name == "lora_only" else memory_loss, batch)
        for name, model in variants.items()
    }
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for round_number in range(args.warmup + args.repeats):
        for name, step in steps.items():  # round robin: every variant under the same load
            tick = time.perf_counter()
            step()
            if round_number >= args.warmup:
                samples[name].append(time.perf_counter() - tick)
    rows = []
    for name, model in variants.items():
        summary = common.summarize(samples[name])
        rows.append(
            {
                "model": name,
                "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
                "ms_per_step": round(1000 * summary["median"], 1),
                "iqr_ms": round(1000 * summary["iqr"], 1),
                "min_ms": round(1000 * summary["min"], 1),
                "steps_timed": summary["n"],
            }
        )
    by_name = {row["model"]: row for row in rows}
    ratio = by_name["memory"]["ms_per_step"] / by_name["lora_only"]["ms_per_step"]
    for row in rows:
        row["vs_lora_only"] = round(row["ms_per_step"] / by_name["lora_only"]["ms_per_step"], 3)
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Memory adapter step time vs LoRA-only (interleaved, same load)",
        machine=machine,
        config={
            "base_preset": "tiny",
            "base_steps": args.base_steps,
            "batch_size": batch_size,
            "seq_len": args.seq_len,
            "lora_rank": rank,
            "warmup_rounds": args.warmup,
            "rounds": args.repeats,
            "quick": args.quick,
        },
        results=rows,
        targets=[
            common.target(
                "memory step time / LoRA-only step time (median, interleaved)",
                "<= 1.15",
                round(ratio, 3),
                ratio <= 1.15,
            )
        ],
        notes=[
            "Each round times one training step of every variant in turn on the same batch of "
            f"{batch_size} x {args.seq_len} chat tokens, so load changes hit all of them alike; "
            "medians over the rounds after the warm-up rounds.",
            f"lora_only: rank {rank} on {bm.LORA_TARGETS} (trainable parameters matched to the "
            f"memory adapter's {budget}); memory: conf/base/parameters_memory.yml's adapter; "
            "memory_lora: the adapter + LoRA r = 8 on c_attn. The base is frozen in all three.",
            "A step: forward, the family's loss (memory: CE + router auxiliary loss), backward, "
            "AdamW over the trainable parameters (no engine, no data loading).",
        ],
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    parser.add_argument("--base-dir", default=None, help="reuse (or save) the base here")
    args = parser.parse_args()
    if args.quick:
        args.base_steps, args.repeats, args.warmup = 10, 3, 1
    run(args)


if __name__ == "__main__":
    main()
