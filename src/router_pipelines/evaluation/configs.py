"""Bit-width configurations to evaluate, and the sweep that evaluates them.

A configuration is uniform (every quantized layer at one width, or full precision), a named
layer-wise assignment (``{"attn_bits", "mlp_bits"}`` per transformer block) or a seeded random
layer-wise mix. Everything is validated against the model's widths and depth before any
evaluation runs.
"""

from __future__ import annotations

import json
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from router_pipelines.config import check_choice, check_positive
from router_pipelines.evaluation.bits import bit_report
from router_pipelines.evaluation.language_modeling import evaluate_language_model
from router_pipelines.evaluation.speed import measure_throughput
from router_pipelines.models.packed import PACKED_WIDTHS, pack_switchable_model
from router_pipelines.models.quantization import MAX_BITS, MIN_BITS

logger = logging.getLogger(__name__)

SUPPORTED_WIDTHS = tuple(range(MIN_BITS, MAX_BITS + 1))  # widths the quantizers can express
FULL_PRECISION = "fp"
LAYER_KEYS = ("attn_bits", "mlp_bits")
SYMBOLIC_WIDTHS = ("high", "low")  # the model's highest / lowest trained width
PACKED_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class SpeedConfig:
    """How throughput is measured for every configuration."""

    enabled: bool = True  # False: speed columns are NaN, speed_kind "not_measured"
    packed: bool = True  # uniform 8/4-bit runs on packed int8/int4 kernels (weight-only)
    # dtype the packed kernels compute in; on this CPU only bf16 is fast (fp32 x hits a slow path)
    packed_dtype: str = "bfloat16"
    decode_batch_size: int = 1  # tokens_per_s: batch-1 decoding is the memory-bound case
    decode_tokens: int = 32  # new tokens per decode run (KV cache)
    prefill_batch_size: int = 1  # prefill_tokens_per_s: one forward over the prompt
    prefill_seq_len: int = 128
    warmup: int = 2  # untimed iterations
    iters: int = 5  # timed iterations (the median is reported)

    def __post_init__(self) -> None:
        for key in ("enabled", "packed"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{key}: expected true or false, got {getattr(self, key)!r}")
        check_choice("packed_dtype", self.packed_dtype, PACKED_DTYPES)
        for key in ("decode_batch_size", "decode_tokens", "prefill_batch_size", "prefill_seq_len"):
            _check_int(key, getattr(self, key), minimum=1)
        _check_int("warmup", self.warmup, minimum=0)
        _check_int("iters", self.iters, minimum=1)


@dataclass
class EvalConfig:
    """Which bit configurations to evaluate, and how."""

    # widths (ints or "fp"); None: every width the model was trained at, then "fp"
    uniform: list[int | str] | None = None
    # name -> one {"attn_bits": b, "mlp_bits": b} per block, or one such dict for every block;
    # b is an int width, "fp", or "high" / "low" (the model's highest / lowest width)
    layer_wise: dict[str, list[dict[str, Any]] | dict[str, Any]] = field(default_factory=dict)
    random_mixes: int = 0  # K random layer-wise mixes drawn from the model's widths
    seed: int = 0  # seed of the random mixes
    batch_size: int = 8  # sequences per evaluation forward
    max_batches: int | None = None  # None: the whole evaluation set
    speed: SpeedConfig = field(default_factory=SpeedConfig)

    def __post_init__(self) -> None:
        if self.uniform is not None:
            if not isinstance(self.uniform, list):
                raise ValueError(
                    f"uniform: expected a list of widths or null, got {self.uniform!r}"
                )
            for width in self.uniform:
                _check_width("uniform", width, SUPPORTED_WIDTHS)
            if len(set(map(str, self.uniform))) != len(self.uniform):
                raise ValueError(f"uniform: widths repeat in {self.uniform!r}")
        if not isinstance(self.layer_wise, dict):
            raise ValueError(
                f"layer_wise: expected a mapping name -> layer list, got {self.layer_wise!r}"
            )
        for name, layers in self.layer_wise.items():
            _check_layers(f"layer_wise.{name}", layers, SUPPORTED_WIDTHS, n_layer=None)
        _check_int("random_mixes", self.random_mixes, minimum=0)
        _check_int("seed", self.seed, minimum=0)
        _check_int("batch_size", self.batch_size, minimum=1)
        if self.max_batches is not None:
            _check_int("max_batches", self.max_batches, minimum=1)
        if isinstance(self.speed, dict):  # built directly rather than by config_from_dict
            self.speed = SpeedConfig(**self.speed)
        if self.uniform == [] and not (self.layer_wise or self.random_mixes):
            raise ValueError(
                "uniform: no configuration to evaluate (uniform, layer_wise, random_mixes all empty)"
            )


@dataclass(frozen=True)
class BitConfiguration:
    """One precision setting of a switchable model."""

    name: str
    kind: Literal["uniform", "layer_wise", "random"]
    layer_config: list[dict[str, int | None]] | None  # per block; None for uniform
    bits: int | None  # uniform width; None for full precision or layer-wise

    def apply(self, model: nn.Module) -> None:
        """Set ``model`` (a ``SwitchableLM``) to this precision.

        A layer-wise configuration sets the blocks; the quantized modules outside them (a
        quantized LM head or embeddings) get the highest width its blocks use, or full
        precision if any block is, so each configuration is fully defined by itself.
        """
        if self.kind == "uniform":
            model.set_precision(self.bits)
        else:
            model.set_precision(self.outer_bits)
            model.set_layer_precision([dict(layer) for layer in self.layer_config])

    @property
    def outer_bits(self) -> int | None:
        """Width of the quantized modules outside the blocks (see :meth:`apply`)."""
        if self.kind == "uniform":
            return self.bits
        widths = [bits for layer in self.layer_config for bits in layer.values()]
        return None if None in widths else max(widths)

    def layer_config_json(self, n_layer: int) -> str:
        """The per-block widths as JSON (uniform configurations expanded; null = full precision)."""
        layers = self.layer_config or [{key: self.bits for key in LAYER_KEYS}] * n_layer
        return json.dumps(layers)


def build_configurations(
    eval_config: EvalConfig, bit_widths: list[int], n_layer: int
) -> list[BitConfiguration]:
    """Expand ``eval_config`` into configurations, validated for this model.

    Args:
        eval_config: what to evaluate.
        bit_widths: the model's switchable widths (``switchable_config.bit_widths``).
        n_layer: the model's number of transformer blocks.

    Raises:
        ValueError: a width not among ``bit_widths``, or a layer-wise config whose length is not
            ``n_layer`` or whose entries are malformed; the message names the config.
    """
    allowed = tuple(sorted(bit_widths))
    check_widths(eval_config, bit_widths)
    configurations = []
    uniform = eval_config.uniform
    for width in [*allowed, FULL_PRECISION] if uniform is None else uniform:
        _check_width("uniform", width, allowed)
        bits = None if width == FULL_PRECISION else width
        name = FULL_PRECISION if bits is None else f"uniform_{bits}bit"
        configurations.append(BitConfiguration(name, "uniform", None, bits))
    for name, layers in eval_config.layer_wise.items():
        layers = _resolve_layers(layers, allowed, n_layer)
        _check_layers(f"layer_wise.{name}", layers, allowed, n_layer)
        configurations.append(BitConfiguration(name, "layer_wise", _normalise_layers(layers), None))
    rng = random.Random(eval_config.seed)
    for index in range(eval_config.random_mixes):
        layers = [{key: rng.choice(allowed) for key in LAYER_KEYS} for _ in range(n_layer)]
        configurations.append(BitConfiguration(f"random_{index}", "random", layers, None))
    names = [c.name for c in configurations]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"layer_wise: configuration names {duplicates} clash with built-in names")
    return configurations


def check_widths(eval_config: EvalConfig, bit_widths: list[int]) -> None:
    """Check every width named in ``eval_config`` against the model's ``bit_widths``.

    Needs no model, so a pipeline calls it before training; layer counts are checked later by
    :func:`build_configurations`, once the model's depth is known.

    Raises:
        ValueError: naming the configuration and the widths allowed.
    """
    allowed = tuple(sorted(bit_widths))
    for width in eval_config.uniform or []:
        _check_width("uniform", width, allowed)
    for name, layers in eval_config.layer_wise.items():
        entries = [layers] if isinstance(layers, dict) else layers
        for index, layer in enumerate(_resolve_layers(entries, allowed, None)):
            for layer_key in LAYER_KEYS:
                _check_width(f"layer_wise.{name}[{index}].{layer_key}", layer[layer_key], allowed)


def _resolve_layers(
    layers: list[dict[str, Any]] | dict[str, Any], allowed: tuple[int, ...], n_layer: int | None
) -> list[dict[str, Any]]:
    """One dict per block: a single dict is repeated ``n_layer`` times; "high"/"low" resolved."""
    if isinstance(layers, dict):
        layers = [layers] * (n_layer or 1)
    symbolic = {"high": allowed[-1], "low": allowed[0]}
    return [
        {k: symbolic.get(v, v) if isinstance(v, str) else v for k, v in layer.items()}
        if isinstance(layer, dict)
        else layer
        for layer in layers
    ]


def evaluate_configurations(
    model: nn.Module,
    configurations: list[BitConfiguration],
    dataset: Dataset,
    eval_config: EvalConfig,
) -> pd.DataFrame:
    """Perplexity, accuracy, bits and speed of ``model`` under each configuration.

    Accuracy always comes from the fake-quantized model (weights and activations as trained).
    Speed comes from packed weight-only kernels for uniform 8/4-bit (``speed_kind``
    ``packed_int8`` / ``packed_int4``, computing in ``speed.packed_dtype``; activation
    quantization dropped), from the model itself at full precision (``fp``), and from the
    fake-quantized model otherwise (``simulated``: no real low-bit arithmetic, so its speed says
    nothing about a deployment). ``speed_dtype`` names the matmul dtype of the timed model.
    The model is left at full precision.

    Args:
        model: a ``SwitchableLM``.
        configurations: from :func:`build_configurations` (checked again against ``model``).
        dataset: the evaluation set (see ``evaluate_language_model``).
        eval_config: batch size, batch limit and speed settings.

    Returns:
        One row per configuration: name, kind, bits, loss, perplexity, token_accuracy,
        eval_tokens, the :func:`~router_pipelines.evaluation.bits.bit_report` columns,
        tokens_per_s (decode), prefill_tokens_per_s, speed_kind, speed_dtype, layer_config
        (JSON, one ``{"attn_bits", "mlp_bits"}`` per block, null = full precision).
    """
    if not configurations:
        raise ValueError("configurations: is empty; build them with build_configurations")
    allowed = tuple(sorted(model.switchable_config.bit_widths))
    for configuration in configurations:
        _check_configuration(configuration, allowed, model.config.num_hidden_layers)
    speed = eval_config.speed
    max_positions = getattr(model.config, "max_position_embeddings", None)
    for key in ("decode_tokens", "prefill_seq_len"):
        if speed.enabled and max_positions is not None and getattr(speed, key) > max_positions:
            raise ValueError(
                f"speed.{key}: {getattr(speed, key)} exceeds the model's {max_positions} positions"
            )
    n_layer = model.config.num_hidden_layers
    rows = []
    try:
        for configuration in configurations:
            configuration.apply(model)
            metrics = evaluate_language_model(
                model,
                dataset,
                batch_size=eval_config.batch_size,
                max_batches=eval_config.max_batches,
            )
            row: dict[str, Any] = {
                "name": configuration.name,
                "kind": configuration.kind,
                "bits": configuration.bits,
                "loss": metrics["loss"],
                "perplexity": metrics["perplexity"],
                "token_accuracy": metrics["token_accuracy"],
                "eval_tokens": metrics["tokens"],
                **bit_report(model),
                **_measure_speed(model, configuration, speed),
                "layer_config": configuration.layer_config_json(n_layer),
            }
            logger.info("evaluated %s: %s", configuration.name, row)
            rows.append(row)
    finally:
        model.set_precision(None)
    return pd.DataFrame(rows)


def _measure_speed(
    model: nn.Module, configuration: BitConfiguration, speed: SpeedConfig
) -> dict[str, float | str]:
    """Decode and prefill tokens/s, which kind of model produced them, and its matmul dtype."""
    if not speed.enabled:
        return {
            "tokens_per_s": math.nan,
            "prefill_tokens_per_s": math.nan,
            "speed_kind": "not_measured",
            "speed_dtype": "",
        }
    timed_model, speed_kind = model, "simulated"
    speed_dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    if configuration.kind == "uniform" and configuration.bits is None:
        speed_kind = "fp"
    elif configuration.kind == "uniform" and speed.packed and configuration.bits in PACKED_WIDTHS:
        try:
            compute_dtype = getattr(torch, speed.packed_dtype)
            timed_model = pack_switchable_model(model, configuration.bits, compute_dtype)
            speed_kind, speed_dtype = f"packed_int{configuration.bits}", speed.packed_dtype
        except NotImplementedError as err:
            logger.warning("%s: timing fake quantization instead: %s", configuration.name, err)
    common = {"warmup": speed.warmup, "iters": speed.iters}
    vocab_size = model.config.vocab_size
    decode = measure_throughput(
        timed_model, vocab_size, speed.decode_batch_size, speed.decode_tokens, "decode", **common
    )
    prefill = measure_throughput(
        timed_model,
        vocab_size,
        speed.prefill_batch_size,
        speed.prefill_seq_len,
        "prefill",
        **common,
    )
    return {
        "tokens_per_s": decode["tokens_per_s"],
        "prefill_tokens_per_s": prefill["tokens_per_s"],
        "speed_kind": speed_kind,
        "speed_dtype": speed_dtype,
    }


def _check_int(key: str, value: Any, minimum: int) -> None:
    check_positive(key, value, allow_zero=True)
    if not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key}: must be an int >= {minimum}, got {value!r}")


def _check_width(key: str, width: Any, allowed: tuple[int, ...]) -> None:
    valid = width in (FULL_PRECISION, *SYMBOLIC_WIDTHS) or (
        not isinstance(width, bool) and width in allowed
    )
    if not valid or isinstance(width, float):
        raise ValueError(
            f"{key}: width {width!r} is not allowed; choose from {list(allowed)}, "
            f"{FULL_PRECISION!r}, 'high' or 'low'"
        )


def _check_layers(key: str, layers: Any, allowed: tuple[int, ...], n_layer: int | None) -> None:
    if isinstance(layers, dict):  # one entry for every block
        layers = [layers]
        n_layer = None
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"{key}: expected a non-empty list of {{'attn_bits', 'mlp_bits'}} dicts")
    if n_layer is not None and len(layers) != n_layer:
        raise ValueError(f"{key}: has {len(layers)} layer entries; the model has {n_layer} layers")
    for index, layer in enumerate(layers):
        if not isinstance(layer, dict) or sorted(layer) != sorted(LAYER_KEYS):
            raise ValueError(f"{key}[{index}]: expected keys {list(LAYER_KEYS)}, got {layer!r}")
        for layer_key in LAYER_KEYS:
            width = layer[layer_key]
            _check_width(f"{key}[{index}].{layer_key}", width, allowed)


def _check_configuration(
    configuration: BitConfiguration, allowed: tuple[int, ...], n_layer: int
) -> None:
    key = f"configurations[{configuration.name!r}]"
    if configuration.kind == "uniform":
        bits = configuration.bits
        _check_width(key, FULL_PRECISION if bits is None else bits, allowed)
    else:
        layers = [
            {k: FULL_PRECISION if v is None else v for k, v in layer.items()}
            for layer in configuration.layer_config or []
        ]
        _check_layers(key, layers, allowed, n_layer)


def _normalise_layers(layers: list[dict[str, Any]]) -> list[dict[str, int | None]]:
    """``"fp"`` -> ``None`` (what ``set_layer_precision`` takes for full precision)."""
    return [
        {key: None if layer[key] == FULL_PRECISION else layer[key] for key in LAYER_KEYS}
        for layer in layers
    ]
