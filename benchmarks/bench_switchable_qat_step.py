"""QAT step time of a switchable model against a full-precision step on the same batches.

One engine-style optimizer step (the family's loss function, backward, grad clipping at 1.0,
the engine's AdamW from ``training.optim.build_optimizer``, ``zero_grad``) for, per preset:

- ``fp``: the plain GPT-2 causal LM with ``causal_lm_loss``;
- ``qat_<b>bit``: a ``SwitchableLM`` with ``bit_widths=[b]`` (weights fake-quantized to ``b``
  bits, activations to ``--act-bits``) and ``make_switchable_loss``, labels only;
- ``qat_kd_<b>bit``: the same plus KL distillation from the frozen FP teacher (one extra
  no-grad teacher forward and the KL over the vocabulary per step);
- ``joint`` / ``joint_kd``: one model trained at all widths every step (Any-Precision DNN),
  without and with the teacher.

Timings on this shared machine drift by up to 2x from one minute to the next, so the
configurations are interleaved: every round runs one step of each (in a rotated order) on
that round's batch, so all see the same seeded random batches under the same conditions.
``--warmup`` untimed rounds come first (the first also initialises the quantizer steps); each
row is the median of ``--steps`` timed rounds. The engine's own overhead over such a bare step
is measured by ``bench_engine.py``.

Target: a single-width QAT step costs at most 1.3x an FP step. KD and joint are reported
without a target (joint does ``len(bit_widths)`` forward/backward passes per step).

    .venv/bin/python benchmarks/bench_switchable_qat_step.py            # tiny + small, ~6 min
    .venv/bin/python benchmarks/bench_switchable_qat_step.py --quick    # smoke run, < 30 s
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import common
import torch
import transformers
from transformers import AutoModelForCausalLM

from router_pipelines.families.switchable import (
    DistillConfig,
    SwitchingConfig,
    make_switchable_loss,
)
from router_pipelines.models.presets import PRESETS, ModelConfig, transformers_config
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM
from router_pipelines.training import TrainingConfig, causal_lm_loss
from router_pipelines.training.optim import build_optimizer

NAME = "switchable_qat_step"
TARGET_RATIO = 1.3  # single-width QAT step / FP step
MAX_GRAD_NORM = 1.0  # the engine's default clipping


def build_base_model(preset: str, vocab_size: int, seed: int = 0) -> torch.nn.Module:
    """A from-scratch GPT-2 of ``preset`` with ``vocab_size`` tokens (random ids are fed, so
    ``build_causal_lm``'s tokenizer argument is skipped)."""
    special_ids = {"bos_token_id": 0, "eos_token_id": 0}  # any id inside the vocabulary
    hf_config = transformers_config(ModelConfig(preset=preset), vocab_size, special_ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)


def random_batches(
    rounds: int, batch_size: int, seq_len: int, vocab_size: int, seed: int
) -> list[dict[str, torch.Tensor]]:
    """One seeded random causal-LM batch per round: ``input_ids`` = ``labels``, ``(B, T)``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (rounds, batch_size, seq_len), generator=generator)
    return [
        {"input_ids": x, "labels": x, "attention_mask": torch.ones_like(x)} for x in ids.unbind(0)
    ]


def build_contenders(
    base: torch.nn.Module, bit_widths: list[int], act_bits: int | None, with_joint: bool
) -> list[dict[str, Any]]:
    """Every configuration: ``name``, ``bits``, ``kd``, ``model``, ``loss_fn``, ``optimizer``.

    Each model is its own copy of ``base``; the KD rows share one frozen copy as teacher.
    """
    optim_config = TrainingConfig(
        output_dir="unused", learning_rate=2e-4, weight_decay=0.0, max_grad_norm=MAX_GRAD_NORM
    )
    teacher = copy.deepcopy(base)
    high_to_low = sorted(bit_widths, reverse=True)
    specs: list[tuple[str, Any, bool, list[int] | None, str]] = [("fp", "fp", False, None, "")]
    for kd in (False, True):
        specs += [(f"qat{'_kd' if kd else ''}_{b}bit", b, kd, [b], "cyclic") for b in bit_widths]
    if with_joint:
        label = "+".join(str(b) for b in high_to_low)
        specs += [(f"joint{'_kd' if kd else ''}", label, kd, high_to_low, "joint") for kd in (0, 1)]
    contenders = []
    for name, bits, kd, widths, strategy in specs:
        if widths is None:
            model, loss_fn = copy.deepcopy(base), causal_lm_loss
        else:
            model = SwitchableLM.from_base(
                copy.deepcopy(base), SwitchableConfig(bit_widths=widths, act_bits=act_bits)
            )
            loss_fn = make_switchable_loss(
                teacher if kd else None,
                SwitchingConfig(strategy=strategy, bit_widths=widths),
                DistillConfig(kd_weight=1.0 if kd else 0.0, temperature=2.0),
            )
        contenders.append(
            {
                "name": name,
                "bits": bits,
                "kd": bool(kd),
                "model": model,
                "loss_fn": loss_fn,
                "optimizer": build_optimizer(model, optim_config),
            }
        )
    return contenders


def optimizer_step(contender: dict[str, Any], batch: dict[str, torch.Tensor], step: int) -> float:
    """Wall seconds of one engine-style optimizer step of ``contender`` on ``batch``."""
    model, optimizer = contender["model"], contender["optimizer"]
    model.train()
    started = time.perf_counter()
    loss, _ = contender["loss_fn"](model, batch, step)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - started


def interleaved_step_seconds(
    contenders: list[dict[str, Any]], batches: list[dict[str, torch.Tensor]], warmup: int
) -> dict[str, list[float]]:
    """Seconds of each contender's timed steps: round ``r`` runs one step of every contender on
    ``batches[r]``, starting ``r`` places further along the list (no fixed position)."""
    samples: dict[str, list[float]] = {c["name"]: [] for c in contenders}
    for step, batch in enumerate(batches):
        shift = step % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            seconds = optimizer_step(contender, batch, step)
            if step >= warmup:
                samples[contender["name"]].append(seconds)
    return samples


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()  # GPT2Config's default special ids warn
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    results, targets = [], []
    for preset in args.presets:
        base = build_base_model(preset, args.vocab_size, args.seed)
        contenders = build_contenders(base, args.bits, args.act_bits, not args.no_joint)
        batches = random_batches(
            args.warmup + args.steps, args.batch_size, args.seq_len, args.vocab_size, args.seed
        )
        samples = interleaved_step_seconds(contenders, batches, args.warmup)
        fp_median = statistics.median(samples["fp"])
        shape = PRESETS[preset]
        for contender in contenders:
            stats = common.summarize(samples[contender["name"]])
            ratio = stats["median"] / fp_median
            row = {
                "table": f"{preset} preset (GPT-2, {shape['n_layer']} layers, "
                f"hidden {shape['hidden']})",
                "preset": preset,
                "config": contender["name"],
                "kind": _kind(contender["name"]),
                "bits": contender["bits"],
                "kd": contender["kd"],
                "median_step_ms": round(stats["median"] * 1000, 1),
                "iqr_ms": round(stats["iqr"] * 1000, 1),
                "ratio_vs_fp": round(ratio, 3),
                "tokens_per_s": round(args.batch_size * args.seq_len / stats["median"], 1),
                "steps_timed": stats["n"],
            }
            results.append(row)
            print(
                f"{preset:6s} {row['config']:14s} {row['median_step_ms']:9.1f} ms/step  "
                f"x{ratio:.2f} vs fp",
                flush=True,
            )
            if row["kind"] == "QAT step":
                targets.append(
                    common.target(
                        f"{preset}: {row['config']} step / FP step",
                        f"<= {TARGET_RATIO}x",
                        round(ratio, 3),
                        ratio <= TARGET_RATIO,
                    )
                )
        del contenders, base
    notes = [
        "One step = loss_fn forward + backward + clip_grad_norm_(1.0) + AdamW step (the "
        "engine's build_optimizer) + zero_grad, CPU fp32. Configurations are interleaved round "
        "by round on the same batches; median over the timed rounds after warmup (the first "
        "warmup round also initialises the quantizer step sizes).",
        "QAT = SwitchableLM with bit_widths=[b], weights fake-quantized to b bits and "
        f"activations to {args.act_bits} bits, labels only. QAT+KD adds a no-grad forward of "
        "the frozen FP teacher and the KL over the full vocabulary per step (no target).",
        "joint trains every width each step (one forward/backward per width, recursive "
        "inter-width KD); about len(bit_widths)x an FP step is expected (no target).",
    ]
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Switchable QAT step time vs full precision",
        machine=machine,
        config={
            key: getattr(args, key)
            for key in (
                "presets",
                "vocab_size",
                "seq_len",
                "batch_size",
                "bits",
                "act_bits",
                "steps",
                "warmup",
                "seed",
                "quick",
            )
        }
        | {"architecture": "gpt2", "optimizer": "AdamW (engine), lr 2e-4, clip 1.0"},
        results=results,
        targets=targets,
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def _kind(name: str) -> str:
    if name == "fp":
        return "FP step"
    if name.startswith("joint"):
        return "joint step" + (" + KD" if name.endswith("_kd") else "")
    return "QAT+KD step" if name.startswith("qat_kd") else "QAT step"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"], choices=sorted(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2])
    parser.add_argument(
        "--act-bits",
        type=lambda s: None if s in ("none", "fp") else int(s),
        default=8,
        help="activation bits of the QAT rows (an int 2..8, or 'fp')",
    )
    parser.add_argument("--steps", type=int, default=6, help="timed rounds (one step each)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--no-joint", action="store_true", help="skip the joint rows")
    args = parser.parse_args(argv)
    if args.quick:
        args.presets, args.vocab_size, args.seq_len = ["debug"], 512, 32
        args.batch_size, args.steps, args.warmup = 2, 1, 1
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be >= 1 (the first step initialises quantizers)")
    return args


if __name__ == "__main__":
    run(parse_args())
