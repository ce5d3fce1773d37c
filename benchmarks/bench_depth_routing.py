"""Mixture-of-Depths and the Dynamic Transformer against dense (issue 9, seed 003).

1. **Cost, on the ``small`` shape** (Qwen2 blocks: 8 layers, hidden 384, intermediate 1024,
   the project's 8,192-token vocabulary, T = ``--seq-len``), untrained weights: analytic
   forward FLOPs per token (blocks; LM head and embeddings apart), measured training-step time
   (forward + backward, ``--batch-size`` sequences) and greedy generation speed (KV cache,
   ``--decode-tokens`` new tokens after a 16-token prompt; routed models route causally with
   thresholds calibrated to γ on a random batch) for dense, MoD and DTF at γ = 0.125 and 0.5.
2. **Quality, on the embedded corpus** (``conf/base`` data: seq_len 256, 8,192-token BPE) with
   the pipeline's own nodes (``train_dense_baseline``, ``train_routed_model``,
   ``evaluate_depth_routing``) on the ``--quality-preset`` shape (``small`` by default, the
   base configuration's batch of 8) for ``--steps`` steps: validation loss and bits per
   byte of dense, MoD (γ 0.125) and DTF (γ 0.5) at equal steps, teacher-forced (top-k) and
   causal (predictor); dense at equal training FLOPs (its eval loss interpolated at the step
   where its FLOPs equal the routed run's); router statistics, DTF's S_CE / S_CU at the first
   and last logged step, and each run's seconds per step (wall and CPU), from which the base
   run's time (1000 steps of routed + dense) is estimated.

Targets (issue 9 §3): MoD γ = 0.125 steps at ≤ 0.75× dense step time; its validation loss ≤ 3 %
above dense at equal steps; generation with the causal predictor faster than dense.

    .venv/bin/python benchmarks/bench_depth_routing.py            # ~25 min on 2 idle cores
    .venv/bin/python benchmarks/bench_depth_routing.py --quick    # smoke run (< 1 min)
"""

from __future__ import annotations

import copy
import tempfile
import time
from typing import Any

import common
import torch
import yaml
from transformers import AutoModelForCausalLM

from router_pipelines.families.depth_routing import flops_per_token
from router_pipelines.models.depth_routing import DepthRoutingConfig
from router_pipelines.models.depth_routing_lm import DepthRoutingLM
from router_pipelines.models.presets import ModelConfig, transformers_config
from router_pipelines.pipelines.depth_routing.evaluation_nodes import evaluate_depth_routing
from router_pipelines.pipelines.depth_routing.nodes import (
    train_dense_baseline,
    train_routed_model,
)

NAME = "depth_routing"
CONF = common.PROJECT_ROOT / "conf/base"
VOCAB = 8192
VARIANTS = [("dense", None), ("mod", 0.125), ("mod", 0.5), ("dtf", 0.125), ("dtf", 0.5)]


def cost_rows(args: Any) -> list[dict[str, Any]]:
    """Table 1: FLOPs, step time and generation speed on the small shape. The variants are
    timed interleaved (one step of each, round after round) so load drift on a shared machine
    hits them alike; medians over the rounds after a warm-up round."""
    import statistics

    hf_config = transformers_config(
        ModelConfig(preset="small", architecture="qwen2"), VOCAB, {"pad_token_id": 0}
    )
    torch.manual_seed(args.seed)
    dense = AutoModelForCausalLM.from_config(hf_config)
    generator = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(0, VOCAB, (args.batch_size, args.seq_len), generator=generator)
    models = []
    for kind, gamma in VARIANTS:
        if kind == "dense":
            models.append((kind, gamma, dense, None))
            continue
        routing = DepthRoutingConfig(model_type=kind, capacity_gamma=gamma)
        model = DepthRoutingLM.from_base(copy.deepcopy(dense), routing)
        model.calibrate_causal_thresholds([ids])
        models.append((kind, gamma, model, routing))
    steps: dict[int, list[float]] = {i: [] for i in range(len(models))}
    decode: dict[int, list[float]] = {i: [] for i in range(len(models))}
    # CPU time of this process as well as wall time: on a shared machine other jobs stretch
    # the wall clock, not the work done here (with one thread, CPU time ≈ compute time).
    steps_cpu: dict[int, list[float]] = {i: [] for i in range(len(models))}
    decode_cpu: dict[int, list[float]] = {i: [] for i in range(len(models))}
    prompt = ids[:1, :16]
    for _ in range(args.iters + 1):  # round 0 is the warm-up
        for i, (_, _, model, _) in enumerate(models):
            model.train()
            start, cpu = time.perf_counter(), time.process_time()
            model(input_ids=ids, labels=ids).loss.backward()
            steps[i].append(time.perf_counter() - start)
            steps_cpu[i].append(time.process_time() - cpu)
            model.zero_grad(set_to_none=True)
            model.eval()
            with torch.no_grad():
                start, cpu = time.perf_counter(), time.process_time()
                model.generate(
                    input_ids=prompt,
                    attention_mask=torch.ones_like(prompt),
                    max_new_tokens=args.decode_tokens,
                    min_new_tokens=args.decode_tokens,
                    do_sample=False,
                    pad_token_id=0,
                )
                decode[i].append(time.perf_counter() - start)
                decode_cpu[i].append(time.process_time() - cpu)
    rows = []
    for i, (kind, gamma, _, routing) in enumerate(models):
        flops = flops_per_token(hf_config, routing, args.seq_len)
        step = statistics.median(steps[i][1:])
        rows.append(
            {
                "table": f"Cost on the small shape (T = {args.seq_len}, batch {args.batch_size})",
                "model": kind,
                "gamma": gamma,
                "block_mflops_per_token": round(flops["blocks"] / 1e6, 3),
                "lm_head_mflops_per_token": round(flops["lm_head"] / 1e6, 3),
                "total_mflops_per_token": round(flops["total"] / 1e6, 3),
                "train_step_ms": round(step * 1e3, 1),
                "train_step_iqr_ms": round(common.summarize(steps[i][1:])["iqr"] * 1e3, 1),
                "generate_tokens_per_s": round(
                    args.decode_tokens / statistics.median(decode[i][1:]), 1
                ),
                "train_step_cpu_ms": round(statistics.median(steps_cpu[i][1:]) * 1e3, 1),
                "generate_tokens_per_cpu_s": round(
                    args.decode_tokens / statistics.median(decode_cpu[i][1:]), 1
                ),
            }
        )
        print(rows[-1])
    base = rows[0]
    for row in rows:
        row["block_flops_vs_dense"] = round(
            row["block_mflops_per_token"] / base["block_mflops_per_token"], 3
        )
        row["total_flops_vs_dense"] = round(
            row["total_mflops_per_token"] / base["total_mflops_per_token"], 3
        )
        row["step_time_vs_dense"] = round(row["train_step_ms"] / base["train_step_ms"], 3)
        row["generate_speed_vs_dense"] = round(
            row["generate_tokens_per_s"] / base["generate_tokens_per_s"], 3
        )
        row["step_cpu_vs_dense"] = round(row["train_step_cpu_ms"] / base["train_step_cpu_ms"], 3)
        row["generate_cpu_speed_vs_dense"] = round(
            row["generate_tokens_per_cpu_s"] / base["generate_tokens_per_cpu_s"], 3
        )
    return rows


def quality_rows(args: Any, work: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Table 2: validation loss / bits per byte at equal steps and equal FLOPs."""
    from bench_switchable_quality import load_tokens

    tokenizer, train_tokens, validation_tokens, _ = load_tokens()
    params = yaml.safe_load((CONF / "parameters_depth_routing.yml").read_text())["depth_routing"]
    params = copy.deepcopy(params)
    params["model"].update(preset=args.quality_preset)
    params["training"].update(
        output_dir=work,
        batch_size=args.quality_batch_size,
        max_steps=args.steps,
        eval_steps=max(1, args.steps // 6),
        eval_max_batches=args.eval_batches,
        save_steps=args.steps,
        warmup_steps=max(1, args.steps // 20),
        progress_bar=False,
    )
    params["evaluation"].update(max_batches=args.eval_batches, speed=False)
    params["register"]["enabled"] = False
    groups = [params[k] for k in ("model_type", "mode", "model", "loss", "training")]
    groups += [params[k] for k in ("dense_baseline", "evaluation", "register")]
    groups.append({"source": "train"})  # always train: no saved model is looked at
    cpu = time.process_time()
    dense_model, dense_summary = train_dense_baseline(  # no store: source train
        train_tokens, validation_tokens, tokenizer, None, *groups
    )
    timing = {"dense": _per_step(dense_summary, time.process_time() - cpu)}
    rows, reports = [], {}
    dense_row = {
        "table": f"Quality on the embedded corpus ({args.quality_preset} shape, {args.steps} steps)",
        "model": "dense",
        "gamma": None,
        "routing": "dense",
        "validation_loss": round(dense_summary["validation_loss"], 4),
        "bits_per_byte": round(dense_summary["validation_bits_per_byte"], 4),
        **timing["dense"],
    }
    rows.append(dense_row)
    for kind, gamma in (("mod", 0.125), ("dtf", 0.5)):
        model_params = {**params["model"], "capacity_gamma": gamma}
        groups[2] = model_params
        cpu = time.process_time()
        _, best, summary, _, _, _ = train_routed_model(
            train_tokens, validation_tokens, tokenizer, None, None, None, *groups, model_type=kind
        )
        timing[kind] = _per_step(summary, time.process_time() - cpu)
        history = best.metadata.get("history") or {}
        _, report = evaluate_depth_routing(
            best, dense_model, summary, dense_summary, validation_tokens, params["evaluation"]
        )
        reports[kind] = report
        comparison = report["comparison"]
        for row in report["rows"]:
            if row["model"] == "dense":
                continue
            rows.append(
                {
                    **{k: dense_row[k] for k in ("table",)},
                    "model": kind,
                    "gamma": gamma,
                    "routing": row["routing"],
                    "validation_loss": round(row["validation_loss"], 4),
                    "bits_per_byte": round(row["validation_bits_per_byte"], 4),
                    "loss_vs_dense_equal_steps": round(
                        row["validation_loss"] / dense_row["validation_loss"], 4
                    ),
                    "total_flops_vs_dense": round(comparison["flops_ratio_total"], 3),
                    "dense_eval_loss_at_equal_flops": _round(
                        comparison["dense_eval_loss_at_equal_flops"]
                    ),
                    "predictor_accuracy": round(
                        report["router_statistics"]["predictor_accuracy"], 4
                    ),
                    "causal_share": round(report["router_statistics"]["causal_share"], 4),
                    **timing[kind],
                    **_gate_history(history),
                }
            )
        print(rows[-2:])
    return rows, reports


def _per_step(summary: dict[str, Any], cpu_seconds: float) -> dict[str, float]:
    """Seconds per training step of one run (the engine's wall clock incl. its evaluations;
    the node's process CPU time incl. the final validation and calibration)."""
    steps = max(int(summary["global_step"]), 1)
    return {
        "train_seconds": round(float(summary["seconds"]), 1),
        "seconds_per_step": round(float(summary["seconds"]) / steps, 3),
        "cpu_seconds_per_step": round(cpu_seconds / steps, 3),
    }


def _gate_history(history: dict[str, list]) -> dict[str, float]:
    """DTF: mean S_CE / S_CU over the routed layers at the first and last logged step."""
    out = {}
    for key in ("s_ce", "s_cu"):
        points = history.get(f"train_{key}") or []
        if points:
            out[f"{key}_first"] = round(float(points[0][1]), 4)
            out[f"{key}_last"] = round(float(points[-1][1]), 4)
    return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main() -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--iters", type=int, default=3)
    parser.set_defaults(threads=1)
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--quality-batch-size", type=int, default=4)
    parser.add_argument("--eval-batches", type=int, default=5)
    parser.add_argument("--quality-preset", default="small")
    args = parser.parse_args()
    if args.quick:
        args.seq_len, args.batch_size, args.iters, args.decode_tokens = 64, 1, 1, 4
        args.steps, args.eval_batches, args.quality_preset = 6, 1, "debug"
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    start = time.perf_counter()
    costs = cost_rows(args)
    with tempfile.TemporaryDirectory(prefix="bench-depth-routing-") as work:
        quality, reports = quality_rows(args, work)
    by = {(r["model"], r["gamma"]): r for r in costs}
    mod8, dtf2 = by[("mod", 0.125)], by[("dtf", 0.5)]
    mod_quality = next(r for r in quality if r["model"] == "mod" and r["routing"] == "topk")
    targets = [
        common.target(
            "MoD γ=0.125 training step time vs dense (small shape, CPU time)",
            "<= 0.75x",
            f"{mod8['step_cpu_vs_dense']}x (wall {mod8['step_time_vs_dense']}x)",
            mod8["step_cpu_vs_dense"] <= 0.75,
        ),
        common.target(
            f"MoD γ=0.125 validation loss vs dense at equal steps ({args.quality_preset} shape)",
            "<= 1.03x",
            f"{mod_quality['loss_vs_dense_equal_steps']}x",
            mod_quality["loss_vs_dense_equal_steps"] <= 1.03,
        ),
        common.target(
            "MoD γ=0.125 generation (causal predictor, KV cache) vs dense tokens/s",
            "> 1.0x",
            f"{mod8['generate_cpu_speed_vs_dense']}x (wall {mod8['generate_speed_vs_dense']}x)",
            mod8["generate_cpu_speed_vs_dense"] > 1.0,
        ),
        common.target(
            "DTF γ=0.5 training step time vs dense (CPU time; reported beside MoD)",
            "report",
            f"{dtf2['step_cpu_vs_dense']}x (wall {dtf2['step_time_vs_dense']}x)",
            True,
        ),
    ]
    stats = {
        kind: [
            {k: round(v, 4) if isinstance(v, float) else v for k, v in layer.items()}
            for layer in report["router_statistics"]["layers"]
        ]
        for kind, report in reports.items()
    }
    layer_rows = [
        {"table": "Router statistics per routed layer (validation)", "model": kind, **layer}
        for kind, layers in stats.items()
        for layer in layers
    ]
    notes = [
        "FLOPs: forward, per token, analytic (families/depth_routing.py flops_per_token): a "
        "block 2(2d² + 2d·d_kv + 3dI) + 4Td; a routed block γ·(that at context γT) + router + "
        "predictor; DTF adds the prior FFN to each Decision layer. LM head 2Vd apart; embeddings 0.",
        "Step time: median of --iters forward+backward passes after one warm-up, fp32 on the "
        "CPU, no optimizer step; generation: greedy with the KV cache, routed blocks cache only "
        "their selected tokens; routed models route causally with thresholds calibrated to γ.",
        "Quality: the pipeline's nodes (same engine, same data order and steps for every "
        "model); 'topk' is teacher-forced routing as in training, 'causal' what generation "
        "does. dense_eval_loss_at_equal_flops interpolates the dense run's eval loss at the "
        "step where its training FLOPs equal the routed run's (blank: before its first eval).",
        "Timings: the speed targets are judged on CPU time of the benchmark process "
        "(time.process_time, one torch thread by default) because the machine was shared with "
        "other jobs; wall-clock columns are reported beside (their IQR shows the noise).",
        f"The quality runs use the {args.quality_preset} shape for {args.steps} steps of batch "
        f"{args.quality_batch_size} × {256} tokens (conf/base trains 1000 steps of batch 8): "
        "shorter than the base run, to fit a benchmark's time on 2 cores. That is "
        f"~{args.steps * args.quality_batch_size * 256 // 1000}k tokens per model: an "
        "early-training comparison, not a converged one.",
        "Base run time estimate: the conf/base run trains routed + dense for 1000 steps of "
        "batch 8 each; 2 × cpu_seconds_per_step × 1000 per model (batch 8 = twice batch 4), "
        "plus evaluation, is the estimate in README.",
    ]
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Mixture-of-Depths and Dynamic Transformer vs dense (cost and quality)",
        machine=machine,
        config={
            "cost_shape": "small (qwen2, 8x384, I=1024, V=8192)",
            "seq_len": args.seq_len,
            "batch_size": args.batch_size,
            "iters": args.iters,
            "decode_tokens": args.decode_tokens,
            "quality_preset": args.quality_preset,
            "quality_steps": args.steps,
            "quality_batch_size": args.quality_batch_size,
            "eval_batches": args.eval_batches,
            "quick": args.quick,
        },
        results=costs + quality + layer_rows,
        targets=targets,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


if __name__ == "__main__":
    main()
