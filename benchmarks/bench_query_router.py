"""Query router (seed 004) at ``conf/base`` sizes: node times and APGR / CPT on held-out queries.

On the embedded default corpus (``conf/base/parameters_data_processing.yml``: 8,192-token BPE,
256-token blocks):

1. a ``tiny`` GPT-2 base model trained by the ``pretrain`` node for ``--base-steps`` steps
   (the default run trains 1,000), or the newest compatible one saved under
   ``data/06_models/pretrain/``;
2. the strong model: that base wrapped as a switchable model at 2 / 4 / 8 bits *without* QAT
   (fake-quantized weights, MSE-initialised steps) — a stand-in for the default run's
   QAT-trained ``switchable.model`` of the same architecture and size, so the node times are
   those of the real configuration;
3. the cheap model: the ladder's model of another size (``query_router.ladder_lm``, a
   ``debug``-preset GPT-2 trained by the same pretrain code on the same tokens for
   ``--ladder-lm-steps``, 1,000 like the conf) with ``provide_ladder_lm``; ``--ladder 2,8``
   routes between two widths of one model instead;
4. the ``query_router`` nodes with the ``conf/base/parameters_query_router.yml`` defaults
   (``[ladder_lm, highest]``, the seed's prompt; three rungs, e.g. ``--ladder 2,4,8``, add
   the ``{model}`` field), each timed.

Targets (issue 11): router APGR >= 0.75 and CPT(50%) <= 20% on held-out queries (RouteLLM's best
published: 0.80 and 13.4% on MT-Bench); outcome scoring + router training + evaluation <= 240 s
on 2 cores. The oracle's values are reported beside them.

    .venv/bin/python benchmarks/bench_query_router.py             # ~8-10 min on 2 cores
    .venv/bin/python benchmarks/bench_query_router.py --ladder 2,8  # two widths, ~5 min
    .venv/bin/python benchmarks/bench_query_router.py --quick     # < 1 min smoke
"""

from __future__ import annotations

import copy
import tempfile
import time
from typing import Any

import common
import yaml

from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM
from router_pipelines.pipelines.data_processing.nodes import (
    ingest_corpus,
    split_corpus,
    tokenize_corpus,
)
from router_pipelines.pipelines.pretrain.nodes import train_base_model
from router_pipelines.pipelines.query_router.evaluation_nodes import evaluate_router
from router_pipelines.pipelines.query_router.nodes import (
    cut_router_queries,
    measure_outcomes,
    provide_ladder_lm,
    train_router,
)
from router_pipelines.training.config import NOTHING_SAVED

NAME = "query_router"
CONF = common.PROJECT_ROOT / "conf" / "base"
SAVED_BASES = common.PROJECT_ROOT / "data" / "06_models" / "pretrain"
BUDGET_S = 240.0


def load_params(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())


def load_tokens() -> tuple[Any, Any, Any, dict[str, Any]]:
    data = dict(load_params("data_processing")["data"])
    for key in ("raw_path", "cache_dir"):
        data[key] = str(common.PROJECT_ROOT / data[key])
    return tokenize_corpus(split_corpus(ingest_corpus(data), data), data)


def base_model(
    tokens: tuple, steps: int, output_dir: str, path: str = ""
) -> tuple[ModelBundle, str]:
    from router_pipelines.models.bundle import load_bundle

    tokenizer, train_tokens, validation_tokens, _ = tokens
    if path:
        bundle = load_bundle(path)
        if bundle.tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"--base-path {path}: its tokenizer is not the data's")
        return bundle, f"loaded from --base-path {path}"
    for config in sorted(SAVED_BASES.glob("*/pretrain/config.json"), reverse=True):
        bundle = load_bundle(config.parent)
        if bundle.tokenizer.get_vocab() == tokenizer.get_vocab():
            return bundle, f"reused {config.parent.relative_to(common.PROJECT_ROOT)}"
    params = load_params("pretrain")["pretrain"]
    params["training"].update(
        output_dir=output_dir,
        max_steps=steps,
        warmup_steps=max(1, steps // 10),
        **NOTHING_SAVED,
    )
    bundle, summary, _, _ = train_base_model(
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
    return bundle, f"trained {steps} steps (validation loss {summary['validation_loss']:.3f})"


def switchable_stand_in(base: ModelBundle) -> ModelBundle:
    q = load_params("switchable")["switchable"]["quantization"]
    config = SwitchableConfig(
        bit_widths=[2, 4, 8],
        act_bits=q["act_bits"],
        per_channel=q["per_channel"],
        step_init=q["step_init"],
    )
    model = SwitchableLM.from_base(copy.deepcopy(base.model), config)
    return ModelBundle(model, base.tokenizer, {"family": "switchable"})


def run(args: Any) -> None:
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    started = time.perf_counter()
    params = load_params("query_router")["query_router"]
    tokens = load_tokens()
    with tempfile.TemporaryDirectory(prefix="bench-qr-") as tmp:
        base, base_source = base_model(
            tokens, 20 if args.quick else args.base_steps, tmp + "/b", args.base_path
        )
        print(f"base model: {base_source}", flush=True)
        switchable = switchable_stand_in(base)
        params["training"].update(output_dir=tmp + "/router", progress_bar=False)
        if args.ladder:
            params["outcomes"]["ladder"] = [
                int(w) if w.isdigit() else w for w in args.ladder.split(",")
            ]
            if len(params["outcomes"]["ladder"]) > 2:
                params["prompt"]["user_template"] = (
                    "[Question]\n{question}\n\n[Model]\n{model}\n\nPrediction:\n"
                )
        if args.quick:
            params["queries"]["max_queries"] = 60
            params["training"]["num_train_epochs"] = 1
        params["ladder_lm"]["source"] = {"source": "train"}
        steps = 20 if args.quick else args.ladder_lm_steps
        params["ladder_lm"]["training"].update(
            output_dir=tmp + "/ladder_lm",
            max_steps=steps,
            warmup_steps=max(1, steps // 20),
            **NOTHING_SAVED,
        )
        times = {}
        t = time.perf_counter()
        ladder_lm, ladder_summary = provide_ladder_lm(
            tokens[1],
            tokens[2],
            tokens[0],
            switchable,
            None,
            None,
            params["outcomes"],
            params["ladder_lm"],
        )
        ladder_lm_s = time.perf_counter() - t  # reported apart: the routing budget excludes it
        trained_ladder_lm = ladder_summary.get("enabled") is not False  # on the ladder
        if trained_ladder_lm:
            print(
                f"ladder LM: {ladder_summary['global_step']} steps in {ladder_lm_s:.1f} s, "
                f"validation loss {ladder_summary['validation_loss']:.3f}",
                flush=True,
            )
        t = time.perf_counter()
        queries = cut_router_queries(tokens[2], params["queries"])
        outcomes = measure_outcomes(queries, switchable, ladder_lm, params["outcomes"])
        times["measure_outcomes_s"] = time.perf_counter() - t
        print(f"{len(outcomes)} queries scored in {times['measure_outcomes_s']:.1f} s", flush=True)
        seeds = [int(v) for v in args.seeds.split(",")]
        documents, summaries = [], []
        for seed in seeds:
            params["training"]["seed"] = seed
            t = time.perf_counter()
            router, summary, _ = train_router(
                outcomes,
                base,
                None,
                None,
                params["prompt"],
                params["router"],
                params["data"],
                params["training"],
                {"source": "train"},
            )
            times.setdefault("train_router_s", []).append(time.perf_counter() - t)
            print(
                f"router (seed {seed}) trained in {times['train_router_s'][-1]:.1f} s", flush=True
            )
            t = time.perf_counter()
            _, _, document = evaluate_router(
                router, outcomes, params["prompt"], params["outcomes"], params["evaluation"]
            )
            times.setdefault("evaluate_router_s", []).append(time.perf_counter() - t)
            documents.append(document)
            summaries.append(summary)
    times = {k: (v if isinstance(v, float) else sum(v) / len(v)) for k, v in times.items()}
    document, summary = documents[0], summaries[0]
    metrics = document["metrics"]
    total = sum(times.values())
    rows = []
    for name in ("router", "oracle", "random", "uncertainty", "prompt_gap"):
        for seed, doc in zip(seeds, documents, strict=True):
            if name != "router" and seed != seeds[0]:
                continue  # the baselines do not depend on the router's seed
            m = doc["metrics"]
            rows.append(
                {
                    "table": "Two models: held-out test queries",
                    "router": name if name != "router" else f"router (seed {seed})",
                    "apgr": round(m[f"{name}_apgr"], 4),
                    "cpt_20_pct": round(100 * m[f"{name}_cpt_20"], 1),
                    "cpt_50_pct": round(100 * m[f"{name}_cpt_50"], 1),
                    "cpt_80_pct": round(100 * m[f"{name}_cpt_80"], 1),
                    "hull_area": round(m[f"{name}_hull_area"], 4),
                    "label_accuracy": round(m["label_accuracy_test"], 3)
                    if name == "router"
                    else None,
                }
            )
    for target in document["thresholds"]:
        rows.append(
            {
                "table": "Calibration: target strong share vs realised on held-out queries",
                "target_pct": int(target),
                "realised_pct": round(100 * metrics[f"calibration_target_{target}_test_share"], 1),
            }
        )
    for key, value in times.items():
        rows.append(
            {"table": "Node times (s)", "node": key.removesuffix("_s"), "seconds": round(value, 1)}
        )
    if trained_ladder_lm:
        rows.append(
            {
                "table": "Node times (s)",
                "node": "provide_ladder_lm",
                "seconds": round(ladder_lm_s, 1),
            }
        )
    for key in (
        "ladder_router_hull_area",
        "ladder_router_lambda_hull_area",
        "ladder_oracle_hull_area",
    ):
        if key in metrics:
            rows.append({"table": "Ladder", "curve": key, "value": round(metrics[key], 4)})
    apgr = sum(d["metrics"]["router_apgr"] for d in documents) / len(documents)
    cpt50 = sum(d["metrics"]["router_cpt_50"] for d in documents) / len(documents)
    targets = [
        common.target(
            f"router APGR (held-out, mean of {len(seeds)} seeds)",
            ">= 0.75",
            round(apgr, 4),
            apgr >= 0.75,
        ),
        common.target(
            f"router CPT(50%) (held-out, mean of {len(seeds)} seeds)",
            "<= 20%",
            f"{100 * cpt50:.1f}%",
            cpt50 <= 0.2,
        ),
        common.target(
            "outcomes + router training + evaluation, conf/base sizes",
            f"<= {BUDGET_S:.0f} s",
            f"{total:.1f} s",
            total <= BUDGET_S,
        ),
    ]
    for target in document["thresholds"]:
        share = metrics[f"calibration_target_{target}_test_share"]
        targets.append(
            common.target(
                f"calibrated strong share at target {target}%",
                "within ±5 points",
                f"{100 * share:.1f}%",
                abs(100 * share - int(target)) <= 5,
            )
        )
    ladder = [str(r) for r in params["outcomes"]["ladder"]]
    if trained_ladder_lm:
        cheap_note = (
            f"Ladder {ladder}: the cheap model is the ladder LM "
            f"({params['ladder_lm']['model']['preset']} preset, "
            f"{ladder_summary['global_step']} steps, validation loss "
            f"{ladder_summary['validation_loss']:.3f}); the widths are those of the base's "
            "switchable wrapper without QAT (a stand-in for the default run's switchable.model)."
        )
    else:
        cheap_note = (
            f"Ladder {ladder}: widths of the base's switchable wrapper without QAT (a stand-in "
            "for the default run's switchable.model, same architecture and sizes), so the "
            "widths differ more than after QAT."
        )
    notes = [
        f"Base model: {base_source}. {cheap_note}",
        f"{metrics['test_queries']} held-out test queries; always-cheap quality "
        f"{metrics['always_cheap_quality']:.4f}, always-strong {metrics['always_strong_quality']:.4f} "
        "(mean log-prob per reference token).",
        f"Router: {summary['examples']} training examples, {summary['global_step']} steps "
        f"({summary['epochs']} epochs), label accuracy on test {metrics['label_accuracy_test']:.3f} "
        "(5 classes, quantile labels: chance 0.2).",
        "Costs in the outcomes are measured (seconds: each query's share of a batched forward "
        "pass; weight bytes per reference token); the two-model curves use the strong share "
        "as cost.",
        "prompt_gap is a reference, not a deployable router: it runs both models on the "
        "prompt and routes by how much better the strong one predicts it (how much of the "
        "reference gap the models' own view of a query predicts).",
    ]
    config = {
        "quick": args.quick,
        "base_steps": args.base_steps,
        "ladder": ",".join(str(r) for r in params["outcomes"]["ladder"]),
        "ladder_lm_steps": steps if trained_ladder_lm else None,
        "prompt_tokens": params["queries"]["prompt_tokens"],
        "reference_tokens": params["queries"]["reference_tokens"],
        "epochs": params["training"]["num_train_epochs"],
        "seeds": args.seeds,
        "scoring_batch_size": params["outcomes"]["batch_size"],
    }
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Query router (seed 004): APGR / CPT on held-out queries, conf/base sizes",
        machine=machine,
        config=config,
        results=rows,
        targets=targets,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def main() -> None:
    parser = common.make_parser(__doc__)
    parser.add_argument("--base-steps", type=int, default=300)
    parser.add_argument(
        "--ladder", default="", help="e.g. 2,8 or ladder_lm,4,8 (default: the conf's ladder)"
    )
    parser.add_argument("--ladder-lm-steps", type=int, default=1000)
    parser.add_argument("--base-path", default="", help="a saved base LM bundle folder to use")
    parser.add_argument("--seeds", default="42,43", help="router training seeds")
    run(parser.parse_args())


if __name__ == "__main__":
    main()
