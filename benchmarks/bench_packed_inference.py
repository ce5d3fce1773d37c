"""Packed int8 / int4 inference against fp32 (and simulated low-bit) for one preset.

Variants of the same ``small`` GPT-2 (random weights: speed and bytes do not depend on them):

- ``fp32``: the plain transformers model; ``bf16``: the same cast to bfloat16 (reference);
- ``fake_quant_<b>bit``: the ``SwitchableLM`` at ``b`` bits (weights fake-quantized on every
  forward, activations at 8 bits): what QAT and the accuracy numbers run;
- ``packed_int8`` / ``packed_int4``: ``pack_switchable_model`` (weight-only int8 / int4 codes on
  PyTorch's ``_weight_int8pack_mm`` / tinygemm int4 kernels, computing in ``--packed-dtype``).

Measured per variant:

- bytes: ``bit_report``'s ``weight_bytes`` (the deployable size by its definition: packed
  codes + fp16 scales, everything else fp16; the FP rows show its FP16 baseline) and the
  actual bytes of the model's tensors in memory (parameters + buffers, tied ones once), split
  into the linear layers (the ones that get quantized) and the rest;
- batch-1 decode tokens/s: greedy decoding with the KV cache, ``--new-tokens`` tokens after an
  untimed ``--prompt-len``-token prompt prefill;
- prefill tokens/s: one forward over ``(--prefill-batch, --prefill-len)`` tokens
  (``evaluation.speed.measure_throughput``);
- for packed rows, the max |logit| difference against the simulated model at the same width
  with full-precision activations (packing is weight-only), as a sanity check.

Per-layer mixes (the precision router's per-sequence choices, issue 8): the same model wrapped
in a ``LayerwiseQuantizeForCausalLM`` over widths 2 / 4 / 8 with each block's width forced
(``routing("infer", forced=...)``), simulated (``routed_fake_quant_<mix>``) and on real kernels
(``routed_packed_<mix>``: ``pack_precision_router``, each block on the int4 or int8 kernel of
its width; 2-bit codes run on the int4 kernel). Mixes: ``8`` and ``4`` (every block, the
router machinery's overhead against ``packed_int8`` / ``packed_int4``), ``4-8`` (first half of
the blocks at 4 bits, the rest at 8: mean 6 bits) and ``2-8`` (mean 5 bits). A per-sequence
decision is made once from the prompt, so decoding runs no router.

Variants are interleaved (each round times one decode and one prefill of every variant, in a
rotated order) so drift on a shared machine hits them alike; medians over the timed rounds.
Speed-ups are reported as they are (< 1 is a slowdown). No targets.

    .venv/bin/python benchmarks/bench_packed_inference.py           # small preset, ~1 min
    .venv/bin/python benchmarks/bench_packed_inference.py --quick   # smoke run, < 30 s
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from typing import Any

import common
import torch
import transformers
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.pytorch_utils import Conv1D

from router_pipelines.evaluation import measure_throughput
from router_pipelines.families.switchable import bit_report
from router_pipelines.models.packed import (
    PackedInt4Linear,
    PackedInt8Linear,
    pack_switchable_model,
)
from router_pipelines.models.precision_router import (
    LayerwiseQuantizeForCausalLM,
    RouterConfig,
    pack_precision_router,
)
from router_pipelines.models.presets import PRESETS, ModelConfig, transformers_config
from router_pipelines.models.quant_modules import QuantLinear
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM

NAME = "packed_inference"
LINEAR_TYPES = (nn.Linear, Conv1D, QuantLinear, PackedInt8Linear, PackedInt4Linear)


def build_base_model(preset: str, vocab_size: int, seed: int = 0) -> nn.Module:
    """A from-scratch GPT-2 of ``preset`` with ``vocab_size`` tokens (random ids are fed, so
    ``build_causal_lm``'s tokenizer argument is skipped)."""
    special_ids = {"bos_token_id": 0, "eos_token_id": 0}  # any id inside the vocabulary
    hf_config = transformers_config(ModelConfig(preset=preset), vocab_size, special_ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)


def tensor_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of every parameter and buffer, tied/shared storage once: total, the linear layers
    (``nn.Linear``/``Conv1D``/``QuantLinear``/packed, the LM head excluded since GPT-2 ties it
    to the token embedding) and the rest."""
    hf_model = model.model if isinstance(model, SwitchableLM) else model
    head = hf_model.get_output_embeddings()
    seen: set[int] = set()

    def count(tensors) -> int:
        total = 0
        for tensor in tensors:
            if tensor is None or tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
        return total

    linear = 0
    for module in hf_model.modules():
        if isinstance(module, LINEAR_TYPES) and module is not head:
            linear += count([*module.parameters(), *module.buffers()])
    rest = count([*model.parameters(), *model.buffers()])
    return {
        "tensor_bytes": linear + rest,
        "linear_tensor_bytes": linear,
        "other_tensor_bytes": rest,
    }


@torch.inference_mode()
def decode_seconds(
    model: nn.Module,
    vocab_size: int,
    prompt_len: int,
    new_tokens: int,
    warmup: int,
    iters: int,
    seed: int = 0,
) -> list[float]:
    """Wall seconds of ``new_tokens`` greedy batch-1 decode steps with the KV cache, each
    after an untimed prefill of a seeded random ``prompt_len``-token prompt.

    ``measure_throughput(mode="decode")`` starts from a single token; a real prompt makes the
    cache (and the attention per new token) the size a chat turn sees, hence this loop.
    """
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, vocab_size, (1, prompt_len), generator=generator)  # (1, P)
    was_training = model.training
    model.eval()
    samples = []
    for iteration in range(warmup + iters):
        output = model(input_ids=prompt, use_cache=True)
        started = time.perf_counter()
        for _ in range(new_tokens):
            next_ids = output.logits[:, -1, :].argmax(dim=-1, keepdim=True)  # (1, 1)
            output = model(
                input_ids=next_ids, past_key_values=output.past_key_values, use_cache=True
            )
        if iteration >= warmup:
            samples.append(time.perf_counter() - started)
    model.train(was_training)
    return samples


@torch.inference_mode()
def max_logit_diff(model: nn.Module, reference: nn.Module, vocab_size: int, seq_len: int) -> float:
    """Max |logit| difference of two models on one seeded random sequence ``(1, seq_len)``."""
    ids = torch.randint(0, vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(1))
    model.eval()
    reference.eval()
    logits = model(input_ids=ids, use_cache=False).logits.float()
    expected = reference(input_ids=ids, use_cache=False).logits.float()
    return float((logits - expected).abs().max())


def variants(
    base: nn.Module, switchable: SwitchableLM, fake_bits: list[int], packed_dtype: torch.dtype
) -> list[dict[str, Any]]:
    """Every variant: ``name``, ``kind``, ``bits``, ``model`` and ``precision``, the width the
    shared ``switchable`` is set to before the variant runs (it serves every fake-quant row
    and ``bit_report``)."""
    dtype_name = str(packed_dtype).removeprefix("torch.")
    rows = [
        {"name": "fp32", "kind": "fp", "bits": "fp32", "precision": None, "model": base},
        {
            "name": "bf16",
            "kind": "fp",
            "bits": "bf16",
            "precision": None,
            "model": copy.deepcopy(base).to(torch.bfloat16),
        },
    ]
    rows += [
        {
            "name": f"fake_quant_{bits}bit",
            "kind": "simulated",
            "bits": bits,
            "precision": bits,
            "model": switchable,
        }
        for bits in fake_bits
    ]
    rows += [
        {
            "name": f"packed_int{bits}",
            "kind": f"packed ({dtype_name} compute)",
            "bits": bits,
            "precision": bits,
            "model": pack_switchable_model(switchable, bits, packed_dtype),
        }
        for bits in (8, 4)
    ]
    return rows


ROUTER_WIDTHS = [2, 4, 8]


def mixes(n_layer: int) -> dict[str, list[int]]:
    """Forced per-block widths by name (see the module docstring)."""
    half = n_layer // 2
    return {
        "8": [8] * n_layer,
        "4": [4] * n_layer,
        "4-8": [4] * half + [8] * (n_layer - half),
        "2-8": [2] * half + [8] * (n_layer - half),
    }


def router_variants(
    switchable: SwitchableLM, packed_dtype: torch.dtype
) -> tuple[list[dict[str, Any]], LayerwiseQuantizeForCausalLM]:
    """The per-layer-mix rows (simulated and packed) and the simulated router they share."""
    dtype_name = str(packed_dtype).removeprefix("torch.")
    router = LayerwiseQuantizeForCausalLM(
        copy.deepcopy(switchable), RouterConfig(granularity="sequence"), ROUTER_WIDTHS
    ).eval()
    packed = pack_precision_router(router, packed_dtype)
    rows = []
    for name, widths in mixes(router.num_layers).items():
        for kind, model in (("simulated", router), (f"packed ({dtype_name} compute)", packed)):
            prefix = "routed_fake_quant" if kind == "simulated" else "routed_packed"
            rows.append(
                {
                    "name": f"{prefix}_{name}",
                    "kind": kind,
                    "bits": f"mix {name} (mean {sum(widths) / len(widths):g})",
                    "precision": None,
                    "model": model,
                    "forced": widths,
                }
            )
    return rows, router


def routed(row: dict[str, Any]) -> contextlib.AbstractContextManager:
    """The row's forced widths while it runs (nothing for a plain model)."""
    if "forced" not in row:
        return contextlib.nullcontext()
    return row["model"].routing("infer", forced=row["forced"])


def interleaved_seconds(
    rows: list[dict[str, Any]], switchable: SwitchableLM, args: argparse.Namespace
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Decode and prefill seconds per variant, one sample of each per round; every round runs
    all variants (in a rotated order) so they share the machine's conditions."""
    decode = {row["name"]: [] for row in rows}
    prefill = {row["name"]: [] for row in rows}
    for round_index in range(args.warmup + args.iters):
        shift = round_index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            switchable.set_precision(row["precision"])
            model = row["model"]
            with routed(row):
                decode_s = decode_seconds(
                    model, args.vocab_size, args.prompt_len, args.new_tokens, warmup=0, iters=1
                )[0]
                prefill_s = measure_throughput(
                    model,
                    args.vocab_size,
                    args.prefill_batch,
                    args.prefill_len,
                    "prefill",
                    warmup=0,
                    iters=1,
                    seed=args.seed,
                )["seconds"]
            if round_index >= args.warmup:
                decode[row["name"]].append(decode_s)
                prefill[row["name"]].append(prefill_s)
    return decode, prefill


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()  # GPT2Config's default special ids warn
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    packed_dtype = getattr(torch, args.packed_dtype)
    base = build_base_model(args.preset, args.vocab_size, args.seed).eval()
    switchable = SwitchableLM.from_base(
        copy.deepcopy(base), SwitchableConfig(bit_widths=sorted(set(args.bits) | {8, 4}))
    ).eval()
    calibration = torch.randint(
        0, args.vocab_size, (2, args.prompt_len), generator=torch.Generator().manual_seed(2)
    )
    switchable.initialize_quantizers(calibration)  # step sizes of every width, from data
    rows = variants(base, switchable, args.bits, packed_dtype)
    mixed_rows, router = router_variants(switchable, packed_dtype) if args.mixes else ([], None)
    decode, prefill = interleaved_seconds(rows + mixed_rows, switchable, args)

    byte_rows, speed_rows = [], []
    fp32_bytes = fp32_decode = fp32_prefill = None
    for row in rows:  # the first row is fp32: the reference of every ratio
        switchable.set_precision(row["precision"])
        report = bit_report(switchable)
        memory = tensor_bytes(row["model"])
        decode_stats = common.summarize(decode[row["name"]])
        decode_tps = args.new_tokens / decode_stats["median"]
        prefill_tps = (
            args.prefill_batch * args.prefill_len / common.summarize(prefill[row["name"]])["median"]
        )
        fp32_bytes = fp32_bytes or memory["tensor_bytes"]
        fp32_decode, fp32_prefill = fp32_decode or decode_tps, fp32_prefill or prefill_tps
        byte_rows.append(
            {
                "table": "Weight bytes",
                "variant": row["name"],
                "bits": row["bits"],
                "effective_bits": round(report["effective_bits"], 3),
                "bit_report_weight_bytes": report["weight_bytes"],
                **memory,
                "tensor_vs_fp32": round(memory["tensor_bytes"] / fp32_bytes, 3),
            }
        )
        speed = {
            "table": "Speed (tokens/s; vs_fp32 > 1 is faster)",
            "variant": row["name"],
            "kind": row["kind"],
            "decode_tokens_per_s": round(decode_tps, 1),
            "decode_iqr_ms": round(decode_stats["iqr"] * 1000, 1),
            "decode_vs_fp32": round(decode_tps / fp32_decode, 3),
            "prefill_tokens_per_s": round(prefill_tps, 1),
            "prefill_vs_fp32": round(prefill_tps / fp32_prefill, 3),
        }
        if row["name"].startswith("packed"):
            switchable.set_precision(row["bits"], act_bits=None)  # packing is weight-only
            speed["max_logit_diff_vs_simulated"] = round(
                max_logit_diff(row["model"], switchable, args.vocab_size, args.prompt_len), 5
            )
        speed_rows.append(speed)
        print(
            f"{row['name']:18s} {memory['tensor_bytes'] / 2**20:7.2f} MiB in memory  "
            f"{report['weight_bytes'] / 2**20:6.2f} MiB bit_report  "
            f"decode {decode_tps:8.1f} tok/s (x{speed['decode_vs_fp32']:.2f})  "
            f"prefill {prefill_tps:8.1f} tok/s (x{speed['prefill_vs_fp32']:.2f})",
            flush=True,
        )
    for row in mixed_rows:  # same ratios; no bytes row (bit_report reads uniform widths)
        decode_tps = args.new_tokens / common.summarize(decode[row["name"]])["median"]
        prefill_tps = (
            args.prefill_batch * args.prefill_len / common.summarize(prefill[row["name"]])["median"]
        )
        speed = {
            "table": "Per-layer mixes through the precision router (forced widths)",
            "variant": row["name"],
            "kind": row["kind"],
            "bits": row["bits"],
            "decode_tokens_per_s": round(decode_tps, 1),
            "decode_iqr_ms": round(common.summarize(decode[row["name"]])["iqr"] * 1000, 1),
            "decode_vs_fp32": round(decode_tps / fp32_decode, 3),
            "prefill_tokens_per_s": round(prefill_tps, 1),
            "prefill_vs_fp32": round(prefill_tps / fp32_prefill, 3),
        }
        if row["kind"] != "simulated":
            layers = [m for r in router._routed for m in r]
            saved = [layer.act_widths for layer in layers]
            for layer in layers:  # the weight-only reference
                layer.act_widths = [None] * len(layer.act_widths)
            ids = torch.randint(0, args.vocab_size, (1, args.prompt_len))
            got = row["model"].infer_forward(ids, forced=row["forced"])["logits"]
            expected = router.infer_forward(ids, forced=row["forced"])["logits"]
            speed["max_logit_diff_vs_simulated"] = round(float((got - expected).abs().max()), 5)
            for layer, widths in zip(layers, saved, strict=True):
                layer.act_widths = widths
        speed_rows.append(speed)
        print(
            f"{row['name']:24s} decode {decode_tps:8.1f} tok/s (x{speed['decode_vs_fp32']:.2f})  "
            f"prefill {prefill_tps:8.1f} tok/s (x{speed['prefill_vs_fp32']:.2f})",
            flush=True,
        )
    results = byte_rows + speed_rows

    notes = [
        "bit_report_weight_bytes follows families.switchable.bits: quantized linears as packed b-bit codes "
        "+ one fp16 scale per output channel, every other parameter (embeddings, LM head, "
        "norms, biases) as fp16; on the fp32/bf16 rows it is the FP16 baseline. tensor_bytes is "
        "what the model object holds in memory (parameters + buffers, tied tensors once).",
        "The packed int4 kernel stores its per-channel scale once per group of input columns "
        "(with a zero point) in float32, and the fake-quant rows keep fp32 weights plus "
        "quantizer steps, so their in-memory bytes differ from bit_report's.",
        f"Packed rows are weight-only and compute in {args.packed_dtype}: activations are cast "
        "to it for the kernel and back (on this CPU the fp32 path of the kernels is slow). "
        "Fake-quant rows also fake-quantize activations to 8 bits.",
        "Speed ratios are tokens/s over the fp32 row: above 1 is faster, below 1 slower. "
        "Variants are interleaved: each round times one decode and one prefill of every "
        "variant in a rotated order; medians over the rounds after --warmup.",
    ]
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title=f"Packed int8/int4 inference vs fp32 ({args.preset} preset)",
        machine=machine,
        config={
            key: getattr(args, key)
            for key in (
                "preset",
                "vocab_size",
                "bits",
                "packed_dtype",
                "prompt_len",
                "new_tokens",
                "prefill_batch",
                "prefill_len",
                "warmup",
                "iters",
                "seed",
                "quick",
            )
        }
        | {"architecture": "gpt2", "weights": "random init", "decode_batch": 1},
        results=results,
        targets=[],
        notes=notes,
        seconds=time.perf_counter() - started,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = common.make_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small", choices=sorted(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 2], help="fake-quant rows")
    parser.add_argument(
        "--packed-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"]
    )
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prefill-batch", type=int, default=8)
    parser.add_argument("--prefill-len", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--iters", type=int, default=6, help="timed rounds")
    parser.add_argument(
        "--no-mixes", dest="mixes", action="store_false", help="skip the per-layer-mix rows"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.vocab_size, args.prompt_len, args.new_tokens = "debug", 512, 8, 4
        args.prefill_batch, args.prefill_len, args.warmup, args.iters = 1, 32, 1, 1
    return args


if __name__ == "__main__":
    run(parse_args())
