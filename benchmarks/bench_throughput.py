"""Training and inference tokens/s of the ``small`` preset, and model FLOPs utilisation (MFU).

* Peak: the FLOP/s of ``torch.mm`` on two ``--mm-size`` square matrices (fp32, then bf16),
  ``2 n^3`` FLOPs per product, measured in this run on the same threads. The median time gives
  the peak used for MFU (measured under the same load as the model runs); the best time is
  reported too.
* Training: the engine (``router_pipelines.training.Trainer``, fp32, no checkpoints, evaluation
  or progress bar) on seeded random tokens; step time is the median interval between the ends of
  consecutive ``AdamW.step()`` calls after ``--warmup`` steps.
* Inference: one forward over ``(batch, seq_len)`` without KV cache under ``inference_mode``
  (``router_pipelines.evaluation.speed.measure_throughput`` in ``prefill`` mode).

Model FLOPs per token (PaLM, Chowdhery et al. 2022, appendix B): training
``6 N + 12 n_layer d_model T`` with ``N`` the non-embedding parameters and ``T`` the sequence
length (the attention term counts the full T x T score matrix, as PaLM does); inference is one
third of it (``2 N + 4 n_layer d_model T``). The PaLM count leaves out the tied LM head (a
``d_model x vocab`` matmul per token), which is large for a small model with an 8192 vocabulary,
so a second MFU adds ``6 d_model V`` (training) / ``2 d_model V`` (inference).
"""

from __future__ import annotations

import time
from typing import Any

import common
import torch
import transformers
from bench_engine import StepClock, build_model, random_token_dataset, run_engine

NAME = "throughput"


def matmul_peak(size: int, dtype: torch.dtype, repeats: int, warmup: int = 2) -> dict[str, float]:
    """FLOP/s of ``torch.mm`` on two seeded ``size x size`` matrices of ``dtype``."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    stats = common.summarize(common.time_calls(lambda: torch.mm(a, b), repeats, warmup))
    flops = 2 * size**3
    return {"median_flops": flops / stats["median"], "best_flops": flops / stats["min"]}


def model_flops(model: torch.nn.Module, seq_len: int) -> dict[str, int]:
    """Parameter counts and FLOPs per token of a GPT-2 model (PaLM formula, see module doc)."""
    config = model.config
    n_layer, d_model, vocab = config.n_layer, config.n_embd, config.vocab_size
    total = sum(p.numel() for p in model.parameters())  # the tied LM head is counted once (wte)
    embedding = model.transformer.wte.weight.numel() + model.transformer.wpe.weight.numel()
    non_embedding = total - embedding
    attention = 12 * n_layer * d_model * seq_len
    return {
        "params_total": total,
        "params_non_embedding": non_embedding,
        "train_flops_per_token": 6 * non_embedding + attention,
        "train_flops_per_token_with_head": 6 * non_embedding + attention + 6 * d_model * vocab,
        "forward_flops_per_token": (6 * non_embedding + attention) // 3,
        "forward_flops_per_token_with_head": (6 * non_embedding + attention) // 3
        + 2 * d_model * vocab,
    }


def train_tokens_per_s(preset: str, cfg: dict[str, Any]) -> dict[str, float]:
    """Engine training throughput: median step seconds and tokens/s over the timed steps."""
    examples = cfg["max_steps"] * cfg["batch_size"]
    dataset = random_token_dataset(examples, cfg["seq_len"], cfg["vocab_size"], cfg["seed"])
    model = build_model(preset, cfg["vocab_size"], cfg["seed"])
    clock = StepClock()
    run_engine(model, dataset, cfg, clock, logging=False)
    steps = common.summarize(clock.step_seconds(cfg["warmup"]))
    tokens = cfg["batch_size"] * cfg["seq_len"]
    return {
        "step_s": steps["median"],
        "step_iqr_s": steps["iqr"],
        "tokens_per_s": tokens / steps["median"],
    }


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small", choices=["debug", "tiny", "small"])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192, help="the BPE vocabulary size")
    parser.add_argument("--steps", type=int, default=8, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps first")
    parser.add_argument("--forward-iters", type=int, default=8, help="timed inference forwards")
    parser.add_argument("--mm-size", type=int, default=2048, help="square matmul size for peak")
    parser.add_argument("--mm-repeats", type=int, default=10, help="timed matmuls per dtype")
    # One thread by default, like bench_engine.py: on 2 shared cores a 2-thread run swung 5-10x
    # with the other jobs' load. Peak and model runs share the count, so MFU stays comparable.
    parser.set_defaults(threads=1)
    args = parser.parse_args()
    if args.quick:
        args.preset, args.batch_size, args.seq_len, args.vocab_size = "debug", 2, 64, 1024
        args.steps, args.warmup, args.forward_iters = 3, 1, 3
        args.mm_size, args.mm_repeats = 512, 3
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)

    from router_pipelines.evaluation.speed import measure_throughput

    peaks = {
        name: matmul_peak(args.mm_size, dtype, args.mm_repeats)
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    for name, peak in peaks.items():
        print(
            f"matmul {name}: {peak['median_flops'] / 1e9:.1f} GFLOP/s (best {peak['best_flops'] / 1e9:.1f})"
        )
    cfg = {
        "max_steps": args.warmup + args.steps,
        "warmup": args.warmup,
        "lr_warmup": 1,
        "batch_size": args.batch_size,
        "seq_len": args.seq_len,
        "vocab_size": args.vocab_size,
        "seed": args.seed,
        "log_every": args.warmup + args.steps,
    }
    train = train_tokens_per_s(args.preset, cfg)
    print(f"train: {train['tokens_per_s']:.0f} tokens/s ({train['step_s'] * 1e3:.0f} ms/step)")
    model = build_model(args.preset, args.vocab_size, args.seed)
    flops = model_flops(model, args.seq_len)
    forward = measure_throughput(
        model,
        args.vocab_size,
        args.batch_size,
        args.seq_len,
        "prefill",
        warmup=2,
        iters=args.forward_iters,
        seed=args.seed,
    )
    print(f"forward: {forward['tokens_per_s']:.0f} tokens/s")

    fp32_peak = peaks["fp32"]["median_flops"]
    rows = []
    for mode, tokens_per_s, step_s, per_token in (
        ("train (fwd+bwd+AdamW)", train["tokens_per_s"], train["step_s"], "train"),
        ("inference (forward)", forward["tokens_per_s"], forward["seconds"], "forward"),
    ):
        achieved = tokens_per_s * flops[f"{per_token}_flops_per_token"]
        achieved_head = tokens_per_s * flops[f"{per_token}_flops_per_token_with_head"]
        rows.append(
            {
                "table": "model throughput and MFU",
                "mode": mode,
                "tokens_per_s": round(tokens_per_s, 1),
                "ms_per_batch": round(step_s * 1e3, 1),
                "gflop_per_s": round(achieved / 1e9, 2),
                "mfu_pct_vs_fp32_mm": round(100 * achieved / fp32_peak, 2),
                "mfu_pct_with_head": round(100 * achieved_head / fp32_peak, 2),
                "mfu_pct_vs_best_fp32_mm": round(100 * achieved / peaks["fp32"]["best_flops"], 2),
            }
        )
    for name, peak in peaks.items():
        rows.append(
            {
                "table": "matmul peak (this run)",
                "mode": f"torch.mm {args.mm_size}x{args.mm_size} {name}",
                "median_gflop_per_s": round(peak["median_flops"] / 1e9, 2),
                "best_gflop_per_s": round(peak["best_flops"] / 1e9, 2),
            }
        )
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title=f"Tokens/s and model FLOPs utilisation, `{args.preset}` preset (CPU fp32)",
        machine=machine,
        config={
            "preset": args.preset,
            "architecture": "gpt2",
            **{k: v for k, v in flops.items()},
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "vocab_size": args.vocab_size,
            "timed_train_steps": args.steps,
            "warmup_steps_dropped": args.warmup,
            "timed_forwards": args.forward_iters,
            "matmul": f"torch.mm {args.mm_size}x{args.mm_size}, {args.mm_repeats} timed after 2 warmup",
            "flops_formula": "PaLM appendix B: 6N + 12 L d T (train), a third of it (forward); "
            "N = non-embedding params; 'with_head' adds 6 d V (train) / 2 d V (forward)",
            "quick": args.quick,
        },
        results=rows,
        targets=[],
        notes=[
            "mfu_pct_vs_fp32_mm: model FLOP/s over the median fp32 torch.mm FLOP/s of this run "
            "(both runs fp32); mfu_pct_with_head counts the tied LM head's matmul too; "
            "mfu_pct_vs_best_fp32_mm uses the fastest matmul instead of the median.",
            "The bf16 matmul peak is for reference only: the runs here are fp32.",
            "Threads: 1 by default (--threads; see machine.torch_threads), for the matmul peak "
            "and the model alike; on an idle machine run --threads 2 for the 2-core figures.",
            "Training tokens/s is the engine's step time (data loading, forward, backward, "
            "clipping, AdamW, scheduler); forward tokens/s is one forward without KV cache.",
        ],
        seconds=time.perf_counter() - started,
    )


if __name__ == "__main__":
    main()
