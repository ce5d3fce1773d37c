"""Bit configurations of a switchable model as sweep :class:`~router_pipelines.evaluation.Setting`s.

A configuration is uniform (every quantized layer at one width, or full precision), a named
layer-wise assignment (``{"attn_bits", "mlp_bits"}`` per transformer block) or a seeded random
layer-wise mix. :func:`build_bit_settings` expands a :class:`BitEvalConfig` into them,
validated against the model's widths and depth; ``evaluate_settings`` then evaluates them like
any other family's settings. Each row gets the :func:`~.bits.bit_report` columns (effective
bits, bytes, compression) and the per-block widths; uniform 8 and 4 bits are timed on packed
int8 / int4 weight-only kernels (:mod:`router_pipelines.models.packed`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from router_pipelines.config import check_bool, check_choice, check_int
from router_pipelines.evaluation.settings import TimedModel
from router_pipelines.evaluation.sweep import SpeedConfig, SweepConfig
from router_pipelines.families.switchable.bits import bit_report
from router_pipelines.families.switchable.widths import (
    FULL_PRECISION,
    SUPPORTED_WIDTHS,
    check_layers,
    check_width,
    normalise_layers,
    resolve_layers,
)
from router_pipelines.models.layers import LAYER_KEYS
from router_pipelines.models.packed import PACKED_WIDTHS, pack_switchable_model

logger = logging.getLogger(__name__)

PACKED_DTYPES = ("bfloat16", "float16", "float32")


@dataclass
class PackedSpeedConfig(SpeedConfig):
    """Speed settings of the bit sweep: the generic ones plus the packed kernels."""

    packed: bool = True  # uniform 8/4-bit runs on packed int8/int4 kernels (weight-only)
    # dtype the packed kernels compute in; on this CPU only bf16 is fast (fp32 x hits a slow path)
    packed_dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("packed", self.packed)
        check_choice("packed_dtype", self.packed_dtype, PACKED_DTYPES)


@dataclass
class BitEvalConfig(SweepConfig):
    """Which bit configurations to evaluate (the sweep's batch and speed fields are inherited)."""

    speed: PackedSpeedConfig = field(default_factory=PackedSpeedConfig)
    # widths (ints or "fp"); None: every width the model was trained at, then "fp"
    uniform: list[int | str] | None = None
    # name -> one {"attn_bits": b, "mlp_bits": b} per block, or one such dict for every block;
    # b is an int width, "fp", or "high" / "low" (the model's highest / lowest width)
    layer_wise: dict[str, list[dict[str, Any]] | dict[str, Any]] = field(default_factory=dict)
    random_mixes: int = 0  # K random layer-wise mixes drawn from the model's widths
    seed: int = 0  # seed of the random mixes

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.uniform is not None:
            if not isinstance(self.uniform, list):
                raise ValueError(
                    f"uniform: expected a list of widths or null, got {self.uniform!r}"
                )
            for width in self.uniform:
                check_width("uniform", width, SUPPORTED_WIDTHS)
            if len(set(map(str, self.uniform))) != len(self.uniform):
                raise ValueError(f"uniform: widths repeat in {self.uniform!r}")
        if not isinstance(self.layer_wise, dict):
            raise ValueError(
                f"layer_wise: expected a mapping name -> layer list, got {self.layer_wise!r}"
            )
        for name, layers in self.layer_wise.items():
            check_layers(f"layer_wise.{name}", layers, SUPPORTED_WIDTHS, n_layer=None)
        check_int("random_mixes", self.random_mixes, minimum=0)
        check_int("seed", self.seed, minimum=0)
        if self.uniform == [] and not (self.layer_wise or self.random_mixes):
            raise ValueError(
                "uniform: no configuration to evaluate (uniform, layer_wise, random_mixes all empty)"
            )


@dataclass(frozen=True)
class BitSetting:
    """One precision setting of a switchable model (a sweep ``Setting``)."""

    name: str
    kind: Literal["uniform", "layer_wise", "random"]
    layer_config: list[dict[str, int | None]] | None  # per block; None for uniform
    bits: int | None  # uniform width; None for full precision or layer-wise
    packed_dtype: str | None = None  # time uniform 8/4 bits on packed kernels in this dtype

    def validate(self, model: nn.Module) -> None:
        """Raise ``ValueError`` unless ``model`` (a ``SwitchableLM``) has this setting's widths
        and, for a layer-wise one, its number of blocks."""
        if not hasattr(model, "switchable_config"):
            raise ValueError(f"model: {type(model).__name__} is not a SwitchableLM")
        allowed = tuple(sorted(model.switchable_config.bit_widths))
        if self.kind == "uniform":
            check_width("bits", FULL_PRECISION if self.bits is None else self.bits, allowed)
            return
        layers = [
            {k: FULL_PRECISION if v is None else v for k, v in layer.items()}
            for layer in self.layer_config or []
        ]
        check_layers("layer_config", layers, allowed, model.num_layers)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        """``model`` at this precision inside the block, at its previous precision after.

        A layer-wise configuration sets the blocks; the quantized modules outside them (a
        quantized LM head or embeddings) get the highest width its blocks use, or full
        precision if any block is, so each configuration is fully defined by itself.
        """
        saved = model.precision_map()
        try:
            if self.kind == "uniform":
                model.set_precision(self.bits)
            else:
                model.set_precision(self.outer_bits)
                model.set_layer_precision([dict(layer) for layer in self.layer_config])
            yield
        finally:
            model.set_precision_map(saved)

    def columns(self, model: nn.Module) -> dict[str, Any]:
        """``bits``, the :func:`~.bits.bit_report` columns and ``layer_config`` (JSON, one
        ``{"attn_bits", "mlp_bits"}`` per block, null = full precision)."""
        return {
            "bits": self.bits,
            **bit_report(model),
            "layer_config": self.layer_config_json(model.num_layers),
        }

    @property
    def speed_kind(self) -> str:
        """``fp`` at full precision, else ``simulated`` (fake quantization in floating point:
        its speed says nothing about a deployment) unless :meth:`timed_model` packs it."""
        return "fp" if self.kind == "uniform" and self.bits is None else "simulated"

    def timed_model(self, model: nn.Module) -> TimedModel | None:
        """A packed int8 / int4 copy for uniform 8 / 4 bits (weight-only kernels computing in
        ``packed_dtype``; activation quantization dropped), else ``None`` (time ``model``)."""
        if self.kind != "uniform" or self.packed_dtype is None or self.bits not in PACKED_WIDTHS:
            return None
        try:
            packed = pack_switchable_model(model, self.bits, getattr(torch, self.packed_dtype))
        except NotImplementedError as err:
            logger.warning("%s: timing fake quantization instead: %s", self.name, err)
            return None
        return TimedModel(packed, f"packed_int{self.bits}", self.packed_dtype)

    @property
    def outer_bits(self) -> int | None:
        """Width of the quantized modules outside the blocks (see :meth:`applied`)."""
        if self.kind == "uniform":
            return self.bits
        widths = [bits for layer in self.layer_config for bits in layer.values()]
        return None if None in widths else max(widths)

    def layer_config_json(self, n_layer: int) -> str:
        """The per-block widths as JSON (uniform configurations expanded; null = full precision)."""
        layers = self.layer_config or [{key: self.bits for key in LAYER_KEYS}] * n_layer
        return json.dumps(layers)


def build_bit_settings(eval_config: BitEvalConfig, model: nn.Module) -> list[BitSetting]:
    """The settings of ``eval_config`` for ``model`` (a ``SwitchableLM``: its trained widths
    and number of blocks); see :func:`build_configurations`."""
    if not hasattr(model, "switchable_config"):
        raise ValueError(f"model: {type(model).__name__} is not a SwitchableLM")
    return build_configurations(eval_config, model.switchable_config.bit_widths, model.num_layers)


def build_configurations(
    eval_config: BitEvalConfig, bit_widths: list[int], n_layer: int
) -> list[BitSetting]:
    """Expand ``eval_config`` into settings, validated for a model of these widths and depth.

    Names: ``uniform_<b>bit`` and ``fp`` (uniform), the ``layer_wise`` keys, ``random_<i>``.

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
    speed = eval_config.speed
    packed_dtype = speed.packed_dtype if speed.packed else None
    settings = []
    uniform = eval_config.uniform
    for width in [*allowed, FULL_PRECISION] if uniform is None else uniform:
        check_width("uniform", width, allowed)
        bits = None if width == FULL_PRECISION else width
        name = FULL_PRECISION if bits is None else f"uniform_{bits}bit"
        settings.append(BitSetting(name, "uniform", None, bits, packed_dtype))
    for name, layers in eval_config.layer_wise.items():
        layers = resolve_layers(layers, allowed, n_layer)
        check_layers(f"layer_wise.{name}", layers, allowed, n_layer)
        settings.append(BitSetting(name, "layer_wise", normalise_layers(layers), None))
    rng = random.Random(eval_config.seed)
    for index in range(eval_config.random_mixes):
        layers = [{key: rng.choice(allowed) for key in LAYER_KEYS} for _ in range(n_layer)]
        settings.append(BitSetting(f"random_{index}", "random", layers, None))
    names = [s.name for s in settings]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"layer_wise: configuration names {duplicates} clash with built-in names")
    return settings


def check_widths(eval_config: BitEvalConfig, bit_widths: list[int]) -> None:
    """Check every width named in ``eval_config`` against the model's ``bit_widths``.

    Needs no model, so a pipeline calls it before training; layer counts are checked later by
    :func:`build_configurations`, once the model's depth is known.

    Raises:
        ValueError: naming the configuration and the widths allowed.
    """
    allowed = tuple(sorted(bit_widths))
    for width in eval_config.uniform or []:
        check_width("uniform", width, allowed)
    for name, layers in eval_config.layer_wise.items():
        entries = [layers] if isinstance(layers, dict) else layers
        for index, layer in enumerate(resolve_layers(entries, allowed, None)):
            for layer_key in LAYER_KEYS:
                check_width(f"layer_wise.{name}[{index}].{layer_key}", layer[layer_key], allowed)
