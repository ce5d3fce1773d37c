"""Width values of the bit sweep: ints, ``"fp"``, and ``"high"`` / ``"low"`` per model.

A layer-wise configuration is a list with one ``{"attn_bits", "mlp_bits"}`` dict per block
(:data:`~router_pipelines.models.layers.LAYER_KEYS`), or one such dict for every block.
"""

from __future__ import annotations

from typing import Any

from router_pipelines.models.layers import LAYER_KEYS
from router_pipelines.models.quantization import MAX_BITS, MIN_BITS

SUPPORTED_WIDTHS = tuple(range(MIN_BITS, MAX_BITS + 1))  # widths the quantizers can express
FULL_PRECISION = "fp"
SYMBOLIC_WIDTHS = ("high", "low")  # the model's highest / lowest trained width


def check_width(key: str, width: Any, allowed: tuple[int, ...]) -> None:
    """Raise unless ``width`` is one of ``allowed``, ``"fp"``, ``"high"`` or ``"low"``."""
    valid = width in (FULL_PRECISION, *SYMBOLIC_WIDTHS) or (
        not isinstance(width, bool) and width in allowed
    )
    if not valid or isinstance(width, float):
        raise ValueError(
            f"{key}: width {width!r} is not allowed; choose from {list(allowed)}, "
            f"{FULL_PRECISION!r}, 'high' or 'low'"
        )


def check_layers(key: str, layers: Any, allowed: tuple[int, ...], n_layer: int | None) -> None:
    """Raise unless ``layers`` is one dict for every block or ``n_layer`` dicts (any length
    when ``n_layer`` is ``None``) of :data:`LAYER_KEYS` with allowed widths."""
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
            check_width(f"{key}[{index}].{layer_key}", layer[layer_key], allowed)


def resolve_layers(
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


def normalise_layers(layers: list[dict[str, Any]]) -> list[dict[str, int | None]]:
    """``"fp"`` -> ``None`` (what ``set_layer_precision`` takes for full precision)."""
    return [
        {key: None if layer[key] == FULL_PRECISION else layer[key] for key in LAYER_KEYS}
        for layer in layers
    ]
