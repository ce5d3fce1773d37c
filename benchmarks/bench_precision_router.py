"""Does the layer-wise precision router beat the best static assignment at equal bits?

On the embedded default corpus (the data nodes with ``conf/base/parameters_data_processing.yml``):

1. a full-precision GPT-2 base model (``--preset``, default ``tiny``) trained by the
   ``pretrain`` node for ``--base-steps`` (or the newest saved ``data/06_models/pretrain`` one
   with the same tokenizer and preset, ``--base auto``);
2. post-training quantized at ``--widths`` (no QAT: the ``ptq`` source of the pipeline), so the
   lowest width costs real quality;
3. the pipeline's own nodes ``train_router`` and ``evaluate_router`` with the defaults of
   ``conf/base/parameters_precision_router.yml``, overridden by the flags here (granularity,
   learning rate, epochs, examples);
4. the evaluation table: uniform widths, full precision, exact (knapsack), greedy and searched
   (measured calibration losses) static allocations, random assignments and the router at each
   budget, on the validation split.

Targets (issue 8 §5): at every budget the router's perplexity is at or below the best static
assignment's at equal realised bits (±0.1); at some budget it recovers at least half the gap
between the best static assignment at b and at b + 0.5 bits; router FLOPs <= 1 % of the
model's per token.

    .venv/bin/python benchmarks/bench_precision_router.py            # ~15 min on 2 cores
    .venv/bin/python benchmarks/bench_precision_router.py --quick    # < 1 min smoke
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_switchable_quality import load_tokens, saved_base  # noqa: E402

from router_pipelines.models.bundle import load_bundle, save_bundle  # noqa: E402
from router_pipelines.models.presets import PRESETS  # noqa: E402
from router_pipelines.pipelines.precision_router.evaluation_nodes import evaluate_router  # noqa: E402
from router_pipelines.pipelines.precision_router.nodes import (  # noqa: E402
    provide_multi_precision_model,
    train_router,
)
from router_pipelines.pipelines.pretrain.nodes import train_base_model  # noqa: E402
from router_pipelines.training.config import NOTHING_SAVED  # noqa: E402

NAME = "precision_router"
CONF = common.PROJECT_ROOT / "conf" / "base"


def _params(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())


def train_base(tokens: tuple, args: argparse.Namespace, output_dir: str) -> Any:
    tokenizer, train_tokens, validation_tokens, _ = tokens
    params = _params("pretrain")["pretrain"]
    params["model"]["preset"] = args.preset
    params["training"].update(
        output_dir=output_dir,
        max_steps=args.base_steps,
        batch_size=args.base_batch_size,
        warmup_steps=min(params["training"]["warmup_steps"], max(args.base_steps // 10, 1)),
        **NOTHING_SAVED,
    )
    bundle, *_ = train_base_model(
        train_tokens,
        validation_tokens,
        tokenizer,
        None,
        None,
        params["model"],
        params["training"],
        params["lr_finder"],
        params["register"],
    )
    return bundle


def run(args: argparse.Namespace) -> None:
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    start = time.perf_counter()
    tokens = load_tokens()
    tokenizer, train_tokens, validation_tokens, _ = tokens
    with tempfile.TemporaryDirectory(prefix="bench-precision-router-") as tmp:
        base, base_note = (None, "")
        if args.base == "auto":
            base, base_note = saved_base(tokenizer, args.preset)
        base_start = time.perf_counter()
        cache = Path(args.base_cache) if args.base_cache else None
        if base is None and cache is not None and (cache / "config.json").is_file():
            base, base_note = load_bundle(cache), f"reused the benchmark's cached base {cache}"
        if base is None:
            base = train_base(tokens, args, f"{tmp}/base")
            why = f" ({base_note})" if base_note else ""  # why no saved base was used
            base_note = f"trained {args.preset} for {args.base_steps} steps{why}"
            if cache is not None:
                save_bundle(base, cache)
        base_s = time.perf_counter() - base_start

        router_params = _params("precision_router")["precision_router"]
        quantized_params = dict(router_params["quantized"], source="ptq", bit_widths=args.widths)
        multi = provide_multi_precision_model(None, base, tokenizer, train_tokens, quantized_params)
        runs = []
        for seed in args.seeds:
            runs.append(one_seed(seed, multi, tokens, router_params, args, f"{tmp}/router-{seed}"))

    rows, per_seed = [], []
    for seed, (table, results, *_) in zip(args.seeds, runs, strict=True):
        rows += [
            {
                "table": "every method on the validation split, per seed",
                "seed": seed,
                "name": r["name"],
                "kind": r["kind"],
                "budget": r["budget"],
                "mean_bits": round(float(r["mean_bits"]), 4),
                "perplexity": round(float(r["perplexity"]), 3),
                "bits_per_byte": round(float(r["bits_per_byte"]), 5),
                "layer_bits": r["layer_bits"],
            }
            for r in table.to_dict(orient="records")
        ]
        per_seed.append(results)
    for seed, results in zip(args.seeds, per_seed, strict=True):
        for entry in results["per_budget"]:
            rows.append(
                {
                    "table": "routers vs the best static assignment per budget (realised bits)",
                    "seed": seed,
                    **{k: _round(v) for k, v in entry.items()},
                }
            )
    targets, verdict_notes = quality_targets(per_seed, args)
    results0 = per_seed[0]
    lowest, fp = results0["lowest_uniform_perplexity"], results0["fp_perplexity"]
    cost = {k: _round(v) for k, v in results0["router_cost"].items()}
    training_times = ", ".join(
        f"seed {seed}: train {t['train_s']:.0f} s, evaluate {t['eval_s']:.0f} s"
        for seed, (*_, t) in zip(args.seeds, runs, strict=True)
    )
    notes = [
        f"Base model: {base_note}; fp perplexity {fp:.2f}, uniform {args.widths[0]}-bit PTQ "
        f"{lowest:.2f} ({(lowest / fp - 1) * 100:+.1f}%): the lowest width "
        + (
            "costs real quality."
            if lowest / fp > 1.05
            else "costs little; budgets differ only slightly."
        ),
        f"Trained router (`router`): {args.granularity} routing"
        f"{' with the delta feature' if args.delta_feature else ''}, train_router for "
        f"{runs[0][2]['global_step']} steps ({args.epochs} epochs x {args.num_examples} examples, "
        f"lr {args.learning_rate}, seq_len {args.seq_len}), weight_ce 0.7, weight_precision 0.3, "
        "one router for every budget, moved along its trade-off by the calibrated price.",
        "Budget routers (`budget_router`): per budget, started at the static allocation of "
        f"lowest calibration loss (bias margin {args.static_init_margin}) and trained {args.budget_router_steps} steps "
        f"(lr {args.budget_router_lr}) with the target penalty "
        "target_weight * (mean_bits - budget)^2; then price-calibrated like the router; "
        f"selection {args.budget_router_selection}"
        + (
            " (the static start is kept where training did not lower the calibration rows' "
            "loss: see budget_router_selected)."
            if args.budget_router_selection == "calibration"
            else "."
        ),
        f"Calibration: {args.calibration_examples} random training rows not trained on "
        f"(sensitivities: {args.sensitivity}; the searched static allocation's measured losses; "
        "prices by bisection on realised bits); every "
        f"method evaluated on the same {args.eval_batches} validation batches of 8 rows.",
        *verdict_notes,
        f"Final epoch of the trained router (seed {args.seeds[0]}): {runs[0][3]['epochs'][-1]}.",
        f"Router cost (seed {args.seeds[0]}): {cost}.",
        f"Times: base {base_s:.1f} s; {training_times}.",
        "mean_bits: parameter-weighted mean weight width over the decoder blocks' linears "
        "(scales not counted), realised on the validation split for the routers. Speed is not "
        "measured here (evaluation.speed off); per-layer mixes on real packed kernels are "
        "timed by bench_packed_inference.py.",
        f"Seeds {args.seeds}: router seed = s, random_state = 42 + s, random assignments seed s; "
        "base seed 42 (one base for every seed).",
    ]
    # --label: a result of its own (e.g. other widths and budgets) beside the default one
    name = f"{NAME}_{args.label}" if args.label else NAME
    title = "Layer-wise precision router vs static per-layer widths at equal mean bits"
    if args.label:
        title += f" ({args.label.replace('_', ' ')}: widths {args.widths}, budgets {args.budgets})"
    common.write_result(
        common.result_path(name, args),
        name=name,
        title=title,
        machine=machine,
        config={
            "preset": args.preset,
            "base": args.base,
            "base_steps": args.base_steps,
            "widths": args.widths,
            "budgets": args.budgets,
            "granularity": args.granularity,
            "delta_feature": args.delta_feature,
            "num_examples": args.num_examples,
            "epochs": args.epochs,
            "learning_rate": args.learning_rate,
            "seq_len": args.seq_len,
            "eval_batches": args.eval_batches,
            "calibration_examples": args.calibration_examples,
            "sensitivity": args.sensitivity,
            "budget_router_steps": args.budget_router_steps,
            "seeds": args.seeds,
            "quick": args.quick,
        },
        results=rows,
        targets=targets,
        notes=notes,
        seconds=time.perf_counter() - start,
    )


def _round(value: Any) -> Any:
    return round(value, 4) if isinstance(value, float) else value


def one_seed(
    seed: int, multi: Any, tokens: tuple, router_params: dict, args: Any, output_dir: str
) -> tuple:
    """Train the router and evaluate every method with router seed ``seed``."""
    _, train_tokens, validation_tokens, _ = tokens
    training = copy.deepcopy(router_params["training"])
    training.update(
        output_dir=output_dir,
        num_examples=args.num_examples,
        num_epochs=args.epochs,
        learning_rate=args.learning_rate,
        seq_len=args.seq_len,
        random_state=42 + seed,
        progress_bar=False,
        logging_steps=10,
        warmup_steps=min(5, args.epochs * (args.num_examples // 8) // 10),
    )
    evaluation = copy.deepcopy(router_params["evaluation"])
    evaluation.update(
        max_batches=args.eval_batches,
        budgets=args.budgets,
        seed=seed,
        calibration_examples=args.calibration_examples,
        sensitivity=args.sensitivity,
        budget_routers=args.budget_router_steps > 0,
        budget_router_steps=max(args.budget_router_steps, 1),
        budget_router_learning_rate=args.budget_router_lr,
        static_init_margin=args.static_init_margin,
        budget_router_selection=args.budget_router_selection,
    )
    router_cfg = dict(
        router_params["router"],
        granularity=args.granularity,
        seed=seed,
        delta_feature=args.delta_feature,
    )
    train_start = time.perf_counter()
    model, summary, _, history = train_router(
        multi, train_tokens, validation_tokens, router_cfg, training, evaluation
    )
    train_s = time.perf_counter() - train_start
    eval_start = time.perf_counter()
    table, _, results = evaluate_router(
        model, train_tokens, validation_tokens, training, evaluation
    )
    eval_s = time.perf_counter() - eval_start
    return table, results, summary, history, {"train_s": train_s, "eval_s": eval_s}


def quality_targets(per_seed: list[dict], args: Any) -> tuple[list[dict], list[str]]:
    """Issue 8 §5 over every seed, for the trained router and the budget routers."""
    targets, notes = [], []
    for label, prefix in (("router", ""), ("budget router", "budget_router_")):
        entries = [e for r in per_seed for e in r["per_budget"]]
        verdicts = [
            e.get(f"{prefix}at_or_below_static" if prefix else "router_at_or_below_static")
            for e in entries
        ]
        verdicts = [v for v in verdicts if v is not None]
        if not verdicts:
            continue
        within = [e.get(f"{prefix or 'router_'}bits_within_0.1") for e in entries]
        recoveries = [e.get(f"{prefix}gap_recovery" if prefix else "gap_recovery") for e in entries]
        recoveries = [r for r in recoveries if r is not None]
        best = max(recoveries) if recoveries else None
        targets += [
            common.target(
                f"{label}: ppl <= best static ppl at equal realised bits, every budget and seed",
                "every budget",
                f"{sum(verdicts)}/{len(verdicts)} (budget, seed) pairs",
                all(verdicts),
            ),
            common.target(
                f"{label}: realised bits within 0.1 of the budget on held-out data",
                "every budget",
                f"{sum(bool(w) for w in within)}/{len(within)}",
                all(bool(w) for w in within),
            ),
            common.target(
                f"{label}: gap recovery (static b -> b+0.5) at some budget",
                ">= 0.5",
                "n/a" if best is None else round(best, 3),
                best is not None and best >= 0.5,
            ),
        ]
    share = per_seed[0]["router_cost"]["router_flops_share_per_token"]
    targets.append(
        common.target("router FLOPs share per token", "<= 1%", f"{share * 100:.4f}%", share <= 0.01)
    )
    return targets, notes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser(__doc__)
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--base", default="auto", choices=["auto", "train"])
    parser.add_argument("--base-steps", type=int, default=400)
    parser.add_argument("--base-batch-size", type=int, default=16)
    parser.add_argument(
        "--base-cache", default=None, help="folder to keep the trained base in and reuse it from"
    )
    parser.add_argument("--widths", type=int, nargs="+", default=[2, 3, 4, 6, 8])
    parser.add_argument("--budgets", type=float, nargs="+", default=[3.0, 4.0, 5.0, 6.0])
    parser.add_argument("--granularity", default="token", choices=["sequence", "token"])
    parser.add_argument(
        "--delta-feature",
        action="store_true",
        help="router feature: DP-LLM's low-rank estimate of each layer's output change",
    )
    parser.add_argument("--num-examples", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-batches", type=int, default=10)
    parser.add_argument("--calibration-examples", type=int, default=64)
    parser.add_argument("--sensitivity", default="loss", choices=["loss", "fisher"])
    parser.add_argument("--budget-router-steps", type=int, default=32, help="0: no budget routers")
    parser.add_argument("--budget-router-lr", type=float, default=3e-3)
    parser.add_argument("--static-init-margin", type=float, default=3.0)
    parser.add_argument(
        "--budget-router-selection", default="calibration", choices=["calibration", "none"]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument(
        "--label", default=None, help="result name precision_router_<label> (default: none)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.base, args.base_steps, args.base_batch_size = "debug", "train", 4, 4
        args.num_examples, args.epochs, args.seq_len, args.eval_batches = 16, 1, 32, 2
        args.budgets, args.calibration_examples, args.budget_router_steps = [3.0, 5.0], 8, 2
        args.seeds = [0]
    return args


if __name__ == "__main__":
    run(parse_args())
