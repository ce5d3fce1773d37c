"""Effective bits, storage and compression of a switchable model at its current precision (the
cost columns of every bit setting, see :mod:`.settings`).

Definitions (what :func:`bit_report` returns). A *quantized matrix* is the weight of a
``QuantLinear`` or the table of a ``QuantEmbedding`` (every module in
``model.quant_modules()``), stored ``(rows, row_size)``: ``(out_features, in_features)`` for a
linear, ``(num_embeddings, embedding_dim)`` for an embedding. A matrix shared by two modules
(GPT-2's tied LM head and token embedding, both quantized) is one table and counts once.

- **effective_bits**: the parameter-weighted mean, over the quantized matrices, of
  ``b + scale_bits / row_size``. ``b`` is the matrix's current weight width; each of its rows
  stores one symmetric per-row scale (per output channel for a linear) as fp16
  (``scale_bits = 16``; no zero point). A quantized module at full precision (``b = None``)
  counts 16 bits per weight with no scale: the FP16 baseline. Example: 4-bit,
  ``in_features = 32`` gives ``4 + 16/32 = 4.5``. Biases are not part of it.
- **model_bits_per_param**: the same mean over *all* model parameters: quantized matrices as
  above, everything else (embeddings and the LM head unless quantized, norms, biases) at
  16 bits (fp16 storage). Tied parameters are counted once. Learnable quantizer parameters
  (step sizes, clipping levels per width) are training state, not deployed weights: they are
  left out, and the deployed scales are counted instead.
- **weight_bytes**: bytes to store the whole model at this configuration: packed codes
  ``ceil(b * n / 8)`` per quantized matrix of ``n`` weights plus ``2 * rows`` bytes of fp16
  scales, and 2 bytes (fp16) for every other parameter.
- **compression_ratio_fp16 / _fp32**: ``16 / effective_bits`` and ``32 / effective_bits``
  (quantized matrices only).
- **model_compression_fp16 / _fp32**: ``16 / model_bits_per_param`` and
  ``32 / model_bits_per_param`` (all parameters).

Activation widths do not change storage and are not part of any of these numbers.
"""

from __future__ import annotations

import math

from torch import nn

SCALE_BITS = 16  # one fp16 scale per output channel
FP_BITS = 16  # full-precision weights are counted as fp16 storage


def bit_report(model: nn.Module) -> dict[str, float | int]:
    """Effective bits, bytes and compression of ``model`` at its current precision.

    Args:
        model: a ``SwitchableLM`` (``quant_modules()``, ``precision_map()``); see the module
            docstring for the definitions.

    Returns:
        ``effective_bits``, ``model_bits_per_param``, ``weight_bytes``,
        ``compression_ratio_fp16``, ``compression_ratio_fp32``, ``model_compression_fp16``,
        ``model_compression_fp32``, ``quantized_weights`` (weights in quantized matrices) and
        ``total_params`` (deployed parameters counted in ``model_bits_per_param``).
    """
    modules = model.quant_modules()
    precision = model.precision_map()
    missing = sorted(set(modules) - set(precision))
    if missing:
        raise ValueError(f"precision_map: no entry for quantized module(s) {missing}")
    if not modules:
        raise ValueError("model: has no quantized layers; nothing to report")

    width_of_matrix: dict[int, tuple[str, int | None]] = {}  # id(weight) -> (module, bits)
    quantizer_param_ids = set()
    linear_bits = 0.0
    linear_weights = 0
    weight_bytes = 0
    for name, layer in modules.items():
        weight_bits = precision[name][0]
        bias = getattr(layer, "bias", None)
        quantizer_param_ids |= {
            id(p) for p in layer.parameters() if p is not layer.weight and p is not bias
        }
        if id(layer.weight) in width_of_matrix:  # a tied matrix: one table, counted once
            first, first_bits = width_of_matrix[id(layer.weight)]
            if first_bits != weight_bits:
                raise ValueError(
                    f"precision_map: {name} ({weight_bits} bits) shares its weight with {first} "
                    f"({first_bits} bits); one stored table cannot have two widths"
                )
            continue
        width_of_matrix[id(layer.weight)] = (name, weight_bits)
        rows, row_size = layer.weight.shape
        n_weights = rows * row_size
        linear_weights += n_weights
        if weight_bits is None:
            linear_bits += FP_BITS * n_weights
            weight_bytes += FP_BITS // 8 * n_weights
        else:
            linear_bits += n_weights * (weight_bits + SCALE_BITS / row_size)
            weight_bytes += math.ceil(weight_bits * n_weights / 8)
            weight_bytes += SCALE_BITS // 8 * rows
    quant_weight_ids = set(width_of_matrix)

    other_params = 0
    for parameter in model.parameters():  # parameters() yields tied tensors once
        if id(parameter) in quant_weight_ids or id(parameter) in quantizer_param_ids:
            continue
        other_params += parameter.numel()
    weight_bytes += FP_BITS // 8 * other_params
    total_params = linear_weights + other_params

    effective_bits = linear_bits / linear_weights
    model_bits_per_param = (linear_bits + FP_BITS * other_params) / total_params
    return {
        "effective_bits": effective_bits,
        "model_bits_per_param": model_bits_per_param,
        "weight_bytes": int(weight_bytes),
        "compression_ratio_fp16": 16 / effective_bits,
        "compression_ratio_fp32": 32 / effective_bits,
        "model_compression_fp16": 16 / model_bits_per_param,
        "model_compression_fp32": 32 / model_bits_per_param,
        "quantized_weights": linear_weights,
        "total_params": total_params,
    }


def fp_weight_bytes(model: nn.Module) -> int:
    """Bytes to store an unquantized ``model`` on :func:`bit_report`'s scale: every parameter
    at ``FP_BITS`` (fp16), tied tensors once. The cost of a model of another size beside the
    switchable model's widths (the query router's ``ladder_lm``)."""
    return sum(p.numel() for p in model.parameters()) * FP_BITS // 8
