"""Quality of one switchable model against separately trained single-width models.

On the embedded default corpus (``data/01_raw/python_docs.jsonl`` through the data layer with
``conf/base/parameters_data_processing.yml``):

1. a full-precision ``tiny`` GPT-2 base model, trained with the engine (``pretrain`` node
   ``train_base_model``, ``--base-steps``) or reused from ``data/06_models/pretrain/`` when the
   newest saved one has the same tokenizer and preset (``--base auto``); it is the teacher;
2. from that base, with the ``switchable`` pipeline's own node ``train_switchable`` and the
   defaults of ``conf/base/parameters_switchable.yml`` (CE + KD from the teacher, T = 2,
   lr 5e-5 cosine, act_bits 8), each for ``--steps`` optimizer steps on the same batches:
   - ``joint``: one model, every width every step (plus inter-width KD);
   - ``cyclic``: one model, one width per step, switching every ``--switch-interval`` steps;
   - ``separate_<b>bit``: ``bit_widths=[b]`` for each ``b``: the single-width baselines;
3. validation perplexity of every model at every width (``evaluate_language_model``, fixed
   ``--eval-batches``), the FP teacher's, and the untrained fake-quantized base (``ptq``) as a
   reference for what QAT buys.

Targets: switchable / separate perplexity at most 1.03 at 8 and 4 bits and 1.10 at 2 bits; the
switchable model's 8-bit perplexity within 1 % of the FP teacher. "Same steps" means the same
optimizer steps and batches: joint runs every width per step (~3x the compute of a single-width
run), cyclic gives each width about a third of the steps.

    .venv/bin/python benchmarks/bench_switchable_quality.py                    # <= ~25 min, 2 cores
    .venv/bin/python benchmarks/bench_switchable_quality.py --base-steps 120 --steps 40
    .venv/bin/python benchmarks/bench_switchable_quality.py --quick           # < 30 s smoke
    # another recipe, kept beside the default's result as switchable_quality_kd_only.json:
    .venv/bin/python benchmarks/bench_switchable_quality.py --variant kd-only --ce-weight 0 \
        --learning-rate 2e-4
"""

from __future__ import annotations

import argparse
import copy
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import common
import transformers
import yaml

from router_pipelines.data.token_store import TokenBlocks
from router_pipelines.data.torch_dataset import TokenBlockDataset
from router_pipelines.evaluation import evaluate_language_model
from router_pipelines.models.bundle import ModelBundle, load_bundle
from router_pipelines.models.presets import PRESETS
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM
from router_pipelines.pipelines.data_processing.nodes import (
    ingest_corpus,
    split_corpus,
    tokenize_corpus,
)
from router_pipelines.pipelines.pretrain.nodes import train_base_model
from router_pipelines.pipelines.switchable.nodes import train_switchable
from router_pipelines.training.config import NOTHING_SAVED

NAME = "switchable_quality"
CONF = common.PROJECT_ROOT / "conf" / "base"
SAVED_BASES = common.PROJECT_ROOT / "data" / "06_models" / "pretrain"
TARGET_VS_SEPARATE = {8: 1.03, 4: 1.03, 2: 1.10}  # max switchable / separate perplexity
TARGET_8BIT_VS_TEACHER = 1.01
NO_SAVING = NOTHING_SAVED  # the benchmark evaluates the final weights itself; nothing is written


def load_params(name: str) -> dict[str, Any]:
    """One ``conf/base/parameters_<name>.yml`` file as a dict."""
    return yaml.safe_load((CONF / f"parameters_{name}.yml").read_text())


def load_tokens() -> tuple[Any, Any, Any, dict[str, Any]]:
    """``(tokenizer, train_tokens, validation_tokens, data_report)`` of the default corpus,
    through the data-processing nodes (the token cache makes a re-run fast)."""
    data = dict(load_params("data_processing")["data"])
    for key in ("raw_path", "cache_dir"):
        data[key] = str(common.PROJECT_ROOT / data[key])
    return tokenize_corpus(split_corpus(ingest_corpus(data), data), data)


def saved_base(tokenizer: Any, preset: str) -> tuple[ModelBundle | None, str]:
    """The newest saved ``base_lm`` if its tokenizer and preset match, and why (not) used."""
    versions = sorted(SAVED_BASES.glob("*/pretrain/config.json"))
    if not versions:
        return None, f"no saved base model under {SAVED_BASES}"
    bundle = load_bundle(versions[-1].parent)
    folder = versions[-1].parent.relative_to(common.PROJECT_ROOT)  # no machine paths in results
    saved = bundle.metadata.get("model_config") or {}
    if bundle.tokenizer.get_vocab() != tokenizer.get_vocab():
        return None, f"{folder} has another tokenizer"
    if (saved.get("preset"), saved.get("architecture"), saved.get("name_or_path")) != (
        preset,
        "gpt2",
        None,
    ):
        return None, f"{folder} is not a from-scratch gpt2 '{preset}' ({saved})"
    return bundle, f"reused {folder} ({bundle.metadata.get('training', {})})"


def train_base(tokens: tuple, args: argparse.Namespace, output_dir: str) -> ModelBundle:
    """The FP base model, trained by the ``pretrain`` node with its YAML defaults."""
    tokenizer, train_tokens, validation_tokens, _ = tokens
    params = load_params("pretrain")["pretrain"]
    params["model"]["preset"] = args.preset
    params["training"].update(
        NO_SAVING,
        output_dir=output_dir,
        max_steps=args.base_steps,
        batch_size=args.base_batch_size,
        warmup_steps=min(params["training"]["warmup_steps"], args.base_steps // 10),
    )
    bundle, summary, _, _ = train_base_model(
        train_tokens,
        validation_tokens,
        tokenizer,
        None,  # no saved models or registry to look at: without a source the node trains
        None,
        params["model"],
        params["training"],
        params["lr_finder"],
        params["register"],
    )
    print(f"trained base model: {summary}", flush=True)
    return bundle


def train_student(
    base: ModelBundle,
    tokens: tuple,
    widths: list[int],
    strategy: str,
    args: argparse.Namespace,
    output_dir: str,
) -> tuple[SwitchableLM, dict[str, Any]]:
    """A switchable model trained by the pipeline node with the YAML defaults, ``--steps``."""
    _, train_tokens, validation_tokens, _ = tokens
    params = load_params("switchable")["switchable"]
    params["model"]["bit_widths"] = list(widths)
    if args.step_init is not None:
        params["quantization"]["step_init"] = args.step_init
    params["training"].update(
        NO_SAVING,
        output_dir=output_dir,
        switch_strategy=strategy,
        switch_interval=args.switch_interval,
        bit_width_schedule=None,  # only read by the "scheduled" strategy
        max_steps=args.steps,
        batch_size=args.batch_size,
        warmup_steps=min(params["training"]["warmup_steps"], args.steps // 10),
    )
    for key in ("learning_rate", "ce_weight", "kd_weight"):
        if getattr(args, key) is not None:
            params["training"][key] = getattr(args, key)
    # train_switchable freezes the teacher it is given (requires_grad_(False)); a deep copy
    # keeps the base trainable for the next student, which is copied from it.
    fresh = ModelBundle(copy.deepcopy(base.model), base.tokenizer, dict(base.metadata))
    bundle, summary, _ = train_switchable(
        fresh,
        train_tokens,
        validation_tokens,
        None,  # without a source the node trains: no saved models or registry needed
        None,
        params["model"],
        params["quantization"],
        params["training"],
        params["experiment"]["register"],
    )
    return bundle.model, summary


def perplexity(model: Any, dataset: TokenBlockDataset, args: argparse.Namespace) -> dict:
    metrics = evaluate_language_model(
        model, dataset, batch_size=args.eval_batch_size, max_batches=args.eval_batches
    )
    return {
        "perplexity": round(metrics["perplexity"], 4),
        "loss": round(metrics["loss"], 5),
        "token_accuracy": round(metrics["token_accuracy"], 5),
        "eval_tokens": metrics["tokens"],
    }


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    tokenizer, train_tokens, validation_tokens, report = load_tokens()
    if args.quick:  # smoke run: a few short rows (the step-size init dominates otherwise)
        train_tokens, validation_tokens = _shorten(train_tokens, 16), _shorten(validation_tokens, 4)
    tokens = (tokenizer, train_tokens, validation_tokens, report)
    validation = TokenBlockDataset(validation_tokens)
    print(
        f"corpus: {len(train_tokens)} train / {len(validation_tokens)} validation rows of "
        f"{validation.seq_len} tokens, vocab {report['vocab_size']}",
        flush=True,
    )
    rows, timings = [], {}
    with tempfile.TemporaryDirectory(prefix="bench-quality-") as tmp:
        base, base_source = None, "--base train"
        if args.base == "auto":
            base, base_source = saved_base(tokenizer, args.preset)
        elif args.base != "train":
            base, base_source = load_bundle(Path(args.base)), f"loaded {args.base}"
        if base is None:
            print(f"base model: {base_source}; training one", flush=True)
            clock = time.perf_counter()
            base = train_base(tokens, args, f"{tmp}/base")
            timings["base_train_s"] = round(time.perf_counter() - clock, 1)
            base_source = (
                f"trained here ({base_source}): {args.base_steps} steps of batch "
                f"{args.base_batch_size}, not saved"
            )
        print(f"base model: {base_source}", flush=True)
        teacher = base.model.eval()
        rows.append({"model": "teacher_fp", "bits": "fp", **perplexity(teacher, validation, args)})
        print(f"teacher fp: ppl {rows[-1]['perplexity']:.3f}", flush=True)

        step_init = (
            args.step_init or load_params("switchable")["switchable"]["quantization"]["step_init"]
        )
        ptq = SwitchableLM.from_base(
            copy.deepcopy(teacher), SwitchableConfig(bit_widths=args.bits, step_init=step_init)
        )
        calibration = TokenBlockDataset(train_tokens)[0]["input_ids"][None]  # (1, T)
        ptq.initialize_quantizers(calibration)  # step sizes from data, no training
        for bits in args.bits:
            ptq.set_precision(bits)
            rows.append(
                {"model": "ptq_no_training", "bits": bits, **perplexity(ptq, validation, args)}
            )
        del ptq

        runs = [(f"separate_{b}bit", [b], "cyclic") for b in args.bits]
        runs += [(strategy, args.bits, strategy) for strategy in args.strategies]
        for name, widths, strategy in runs:
            clock = time.perf_counter()
            model, summary = train_student(base, tokens, widths, strategy, args, f"{tmp}/{name}")
            timings[f"{name}_train_s"] = round(time.perf_counter() - clock, 1)
            print(f"{name}: {summary['global_step']} steps in {timings[f'{name}_train_s']} s")
            for bits in widths:
                model.set_precision(bits)
                rows.append(
                    {
                        "model": name,
                        "bits": bits,
                        **perplexity(model, validation, args),
                        "optimizer_steps": summary["global_step"],
                        "steps_at_this_width": summary["steps_per_width"][f"{bits}bit"],
                        "train_s": timings[f"{name}_train_s"],
                    }
                )
                print(f"{name:14s} {bits}-bit: ppl {rows[-1]['perplexity']:.3f}", flush=True)
            del model

    targets = add_ratios(rows, args)
    name = f"{NAME}_{args.variant.replace('-', '_')}" if args.variant else NAME
    notes = [
        f"Base model (teacher): {base_source}.",
        f"Every QAT run: train_switchable with conf/base/parameters_switchable.yml defaults "
        f"({_loss_setting(args)}), {args.steps} optimizer steps of batch {args.batch_size}, same "
        "seed and data order. "
        "joint trains every width each step (~len(bit_widths)x the compute); cyclic trains one "
        f"width per step, switching every {args.switch_interval} steps (steps_at_this_width).",
        "separate_<b>bit = SwitchableLM(bit_widths=[b]) trained with the same loss (CE + KD "
        "from the FP teacher); ptq_no_training = the base fake-quantized with data-initialised "
        "steps, no training.",
        f"Perplexity on the first {args.eval_batches} validation batches of "
        f"{args.eval_batch_size} rows; act_bits 8 at every weight width.",
        f"Timings (s): {timings}.",
    ]
    common.write_result(
        common.result_path(name, args),
        name=name,
        title="Switchable vs separately trained single-width models: validation perplexity"
        + (f" ({args.variant})" if args.variant else ""),
        machine=machine,
        config={
            key: getattr(args, key)
            for key in (
                "preset",
                "base",
                "base_steps",
                "base_batch_size",
                "steps",
                "batch_size",
                "bits",
                "strategies",
                "switch_interval",
                "step_init",
                "learning_rate",
                "ce_weight",
                "kd_weight",
                "eval_batches",
                "eval_batch_size",
                "quick",
            )
        }
        | {
            "corpus": str(Path(report["source"]).relative_to(common.PROJECT_ROOT)),
            "seq_len": validation.seq_len,
            "vocab": len(tokenizer),
        },
        results=rows,
        targets=targets,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def add_ratios(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Add ``vs_separate`` / ``vs_teacher`` to every row; return the target checks."""
    teacher = next(r["perplexity"] for r in rows if r["model"] == "teacher_fp")
    separate = {r["bits"]: r["perplexity"] for r in rows if r["model"].startswith("separate")}
    targets = []
    for row in rows:
        row["vs_teacher"] = round(row["perplexity"] / teacher, 4)
        if row["bits"] in separate:
            row["vs_separate"] = round(row["perplexity"] / separate[row["bits"]], 4)
        if row["model"] not in args.strategies:
            continue
        bits = row["bits"]
        if bits in TARGET_VS_SEPARATE and bits in separate:
            limit = TARGET_VS_SEPARATE[bits]
            targets.append(
                common.target(
                    f"{row['model']} / separate perplexity at {bits} bits",
                    f"<= {limit}",
                    row["vs_separate"],
                    _finite(row["vs_separate"]) and row["vs_separate"] <= limit,
                )
            )
        if bits == 8:
            targets.append(
                common.target(
                    f"{row['model']} 8-bit / FP teacher perplexity",
                    f"<= {TARGET_8BIT_VS_TEACHER}",
                    row["vs_teacher"],
                    _finite(row["vs_teacher"]) and row["vs_teacher"] <= TARGET_8BIT_VS_TEACHER,
                )
            )
    return targets


def _shorten(blocks: Any, rows: int, seq_len: int = 32) -> Any:
    """The first ``rows`` blocks of a token store, each cut to its first ``seq_len`` tokens."""
    return TokenBlocks.from_arrays(
        blocks.input_ids[:rows, :seq_len],
        blocks.labels[:rows, :seq_len],
        blocks.attention_mask[:rows, :seq_len],
        fingerprint=f"{blocks.fingerprint}-first{rows}x{seq_len}",
    )


def _loss_setting(args: argparse.Namespace) -> str:
    """The QAT learning rate and loss weights used, and which were overridden on the CLI."""
    training = load_params("switchable")["switchable"]["training"]
    parts = []
    for key in ("learning_rate", "ce_weight", "kd_weight", "temperature"):
        value = getattr(args, key, None)
        parts.append(
            f"{key} {training[key]}"
            if value is None
            else f"{key} {value} (--{key.replace('_', '-')})"
        )
    return ", ".join(parts)


def _finite(value: float) -> bool:
    return math.isfinite(value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument(
        "--base",
        default="auto",
        help="auto (newest compatible saved base_lm, else train), train, or a bundle folder",
    )
    parser.add_argument("--base-steps", type=int, default=600)
    parser.add_argument("--base-batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="QAT optimizer steps per run")
    # 4, not the YAML's 16: joint runs 3 widths plus full-vocabulary KL terms per step (~7x an FP
    # step on this CPU), so batch 4 keeps the whole default run within ~25 min on 2 cores.
    parser.add_argument("--batch-size", type=int, default=4, help="QAT batch size")
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument(
        "--strategies", nargs="+", default=["joint", "cyclic"], choices=["joint", "cyclic"]
    )
    parser.add_argument("--switch-interval", type=int, default=10)
    parser.add_argument(
        "--step-init",
        choices=["mse", "lsq", "max"],
        default=None,
        help="quantizer step init (default: the YAML's, mse)",
    )
    parser.add_argument(
        "--learning-rate", type=float, default=None, help="QAT lr (default: the YAML's)"
    )
    parser.add_argument(
        "--ce-weight", type=float, default=None, help="label CE weight (default: the YAML's)"
    )
    parser.add_argument(
        "--kd-weight", type=float, default=None, help="teacher KD weight (default: the YAML's)"
    )
    parser.add_argument(
        "--variant",
        default=None,
        help="a label for a non-default recipe: result switchable_quality_<variant>.json",
    )
    parser.add_argument("--eval-batches", type=int, default=11)
    parser.add_argument("--eval-batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    if args.variant is not None and not args.variant.replace("-", "").isalnum():
        parser.error(f"--variant: {args.variant!r} must be letters, digits and dashes")
    if args.quick:
        args.preset, args.base, args.base_steps, args.base_batch_size = "debug", "train", 2, 2
        args.steps, args.batch_size, args.switch_interval = 2, 2, 1
        args.eval_batches, args.eval_batch_size = 1, 2
        args.step_init = "max"  # the MSE step search takes most of a smoke run otherwise
    return args


if __name__ == "__main__":
    run(parse_args())
