"""``torch.compile`` (the engine's ``torch_compile``) on dense, MoD and DTF training steps.

The models of the depth-routing benchmark's cost table (the ``small`` Qwen2 shape: 8 layers,
hidden 384, intermediate 1024, the project's 8,192-token vocabulary, T = ``--seq-len``,
``--batch-size`` sequences, untrained weights): dense, MoD at γ = 0.125 and DTF at γ = 0.5, each
trained for ``--steps`` full steps (forward, backward, AdamW step) eager and compiled in place as
the engine does (``runtime.compile_model``: ``nn.Module.compile``, backend ``--backend``).
Reported per model and mode: the first step (compilation included), the median of the later
steps (wall and CPU time of this process), the speed-up of compiled over eager, and dynamo's
graph count and graph breaks (a break splits the step into several compiled graphs with
Python between them).

There is no issue target for the speed-up (issue 9 asks for an optional ``torch.compile``);
the figures are reported as measured. On the CPU inductor generates C++ kernels, so the first
step compiles for a minute or more.

    .venv/bin/python benchmarks/bench_compile.py            # ~10 min on 2 cores
    .venv/bin/python benchmarks/bench_compile.py --quick    # smoke run: debug shape, aot_eager
"""

from __future__ import annotations

import copy
import os
import shutil
import statistics
import tempfile
import time
from typing import Any

import common
import torch
from transformers import AutoModelForCausalLM

from router_pipelines.models.depth_routing import DepthRoutingConfig
from router_pipelines.models.depth_routing_lm import DepthRoutingLM
from router_pipelines.models.presets import ModelConfig, transformers_config
from router_pipelines.training.runtime import CompileSettings, compile_model

NAME = "compile"
VOCAB = 8192
VARIANTS = [("dense", None), ("mod", 0.125), ("dtf", 0.5)]


def build(kind: str, gamma: float | None, preset: str, seed: int) -> torch.nn.Module:
    """The variant, built from the same dense initialisation as every other variant."""
    config = transformers_config(
        ModelConfig(preset=preset, architecture="qwen2"), VOCAB, {"pad_token_id": 0}
    )
    torch.manual_seed(seed)
    dense = AutoModelForCausalLM.from_config(config)
    if kind == "dense":
        return dense
    routing = DepthRoutingConfig(model_type=kind, capacity_gamma=gamma)
    return DepthRoutingLM.from_base(copy.deepcopy(dense), routing)


def train_steps(model: torch.nn.Module, ids: torch.Tensor, steps: int) -> dict[str, Any]:
    """Time ``steps`` full training steps; the first one apart (it compiles)."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    walls, cpus, losses = [], [], []
    for _ in range(steps):
        start, cpu = time.perf_counter(), time.process_time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        losses.append(loss.detach().item())
    return {"walls": walls, "cpus": cpus, "losses": losses}


def dynamo_counts() -> dict[str, int]:
    import torch._dynamo

    counters = torch._dynamo.utils.counters
    return {
        "graphs": int(counters["stats"]["unique_graphs"]),
        "graph_breaks": int(sum(counters["graph_break"].values())),
    }


def main() -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="training steps per model and mode")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--preset", default="small")
    parser.set_defaults(threads=1)
    args = parser.parse_args()
    if args.quick:
        args.seq_len, args.batch_size, args.steps = 32, 1, 2
        args.backend, args.preset = "aot_eager", "debug"
    # inductor keeps compiled kernels on disk: a fresh cache, so first_step_s is a cold compile
    cache = tempfile.mkdtemp(prefix="bench-compile-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
    import torch._dynamo

    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, VOCAB, (args.batch_size, args.seq_len), generator=generator)
    settings = CompileSettings(args.backend, None, "benchmark")
    start = time.perf_counter()
    rows = []
    for kind, gamma in VARIANTS:
        timings = {}
        for mode in ("eager", "compiled"):
            model = build(kind, gamma, args.preset, args.seed)
            counts = {}
            if mode == "compiled":
                torch._dynamo.reset()
                torch._dynamo.utils.counters.clear()  # reset() keeps the counters
                compile_model(model, settings)
            timings[mode] = train_steps(model, ids, args.steps)
            if mode == "compiled":
                counts = dynamo_counts()
            later_wall = timings[mode]["walls"][1:] or timings[mode]["walls"]
            later_cpu = timings[mode]["cpus"][1:] or timings[mode]["cpus"]
            rows.append(
                {
                    "model": kind,
                    "gamma": gamma,
                    "mode": mode if mode == "eager" else f"compiled ({args.backend})",
                    "first_step_s": round(timings[mode]["walls"][0], 2),
                    "step_ms": round(statistics.median(later_wall) * 1e3, 1),
                    "step_cpu_ms": round(statistics.median(later_cpu) * 1e3, 1),
                    "graphs": counts.get("graphs"),
                    "graph_breaks": counts.get("graph_breaks"),
                    "final_loss": round(timings[mode]["losses"][-1], 4),
                }
            )
            print(rows[-1], flush=True)
        eager, compiled = rows[-2], rows[-1]
        for row in (eager, compiled):
            row["speedup_cpu_vs_eager"] = round(eager["step_cpu_ms"] / row["step_cpu_ms"], 3)
            row["speedup_wall_vs_eager"] = round(eager["step_ms"] / row["step_ms"], 3)
        # same initial weights, same batch: the compiled run computes the same losses
        compiled["max_loss_diff_vs_eager"] = round(
            max(
                abs(a - b)
                for a, b in zip(
                    timings["eager"]["losses"], timings["compiled"]["losses"], strict=True
                )
            ),
            6,
        )
    torch._dynamo.reset()
    shutil.rmtree(cache, ignore_errors=True)
    notes = [
        f"Step: forward + backward + AdamW step on one batch of {args.batch_size} x "
        f"{args.seq_len} tokens, fp32 on the CPU, {threads} torch thread(s); step_ms and "
        "step_cpu_ms are medians of the steps after the first; first_step_s includes "
        "compilation for the compiled rows (a cold compile: inductor's on-disk cache starts "
        "empty; a later run with the same shapes reuses its kernels and starts in seconds).",
        "Compiled as the engine does with torch_compile: nn.Module.compile in place (the same "
        "module and state-dict keys), backend as in the mode column, default mode.",
        "graphs / graph_breaks: torch._dynamo counters after the compiled run (reset before "
        "each model). The MoD/DTF top-k steps here compile as one graph: the routed blocks "
        "pass the known top-k count instead of reading it off the device. Causal (predictor) "
        "routing picks a data-dependent number of tokens and breaks the graph there; it is "
        "not measured here.",
        "The steps here pass no attention_mask, as the depth-routing cost table does; the "
        "engine's batches carry one, and the routed model's padding check then reads it off "
        "the device once at the top of forward: one graph break there, the blocks stay one "
        "graph.",
        "max_loss_diff_vs_eager: largest difference of the per-step training losses between "
        "the eager and compiled runs from the same weights and batch.",
    ]
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="torch.compile on dense, MoD and DTF training steps (engine torch_compile)",
        machine=machine,
        config={
            "preset": args.preset,
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "backend": args.backend,
            "quick": args.quick,
        },
        results=rows,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()
