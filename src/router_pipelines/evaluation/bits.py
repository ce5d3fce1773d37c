"""Effective bits, storage and compression of a switchable model at its current precision.

Definitions (what :func:`bit_report` returns):

- **effective_bits**: the parameter-weighted mean, over the weights of the quantized linear
  layers (every ``QuantLinear`` in ``model.quant_linears()``), of ``b + scale_bits / in_features``.
  ``b`` is the layer's current weight width; each of the ``out_features`` rows of
  ``in_features`` weights stores one symmetric per-output-channel scale as fp16
  (``scale_bits = 16``; no zero point). A ``QuantLinear`` at full precision (``b = None``) counts
  16 bits per weight with no scale: the FP16 baseline. Example: 4-bit, ``in_features = 32``
  gives ``4 + 16/32 = 4.5``. Biases are not part of it.
- **model_bits_per_param**: the same mean over *all* model parameters: quantized linear weights
  as above, everything else (embeddings, the LM head, norms, biases, full-precision linears) at
  16 bits (fp16 storage). Tied parameters (GPT-2's LM head and token embedding) are counted
  once; when the LM head is quantized (``quantize_lm_head``) the shared matrix counts once, as
  a quantized layer. Learnable quantizer parameters (step sizes, clipping levels per width) are training
  state, not deployed weights: they are left out, and the deployed scales are counted instead.
- **weight_bytes**: bytes to store the whole model at this configuration: packed codes
  ``ceil(b * n / 8)`` per quantized layer of ``n`` weights plus ``2 * out_features`` bytes of fp16
  scales, and 2 bytes (fp16) for every other parameter.
- **compression_ratio_fp16 / _fp32**: ``16 / effective_bits`` and ``32 / effective_bits``
  (quantized linears only).
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
        model: a ``SwitchableLM`` (``quant_linears()``, ``precision_map()``); see the module
            docstring for the definitions.

    Returns:
        ``effective_bits``, ``model_bits_per_param``, ``weight_bytes``,
        ``compression_ratio_fp16``, ``compression_ratio_fp32``, ``model_compression_fp16``,
        ``model_compression_fp32``, ``quantized_weights`` (weights in QuantLinears) and
        ``total_params`` (deployed parameters counted in ``model_bits_per_param``).
    """
    quant_linears = model.quant_linears()
    precision = model.precision_map()
    missing = sorted(set(quant_linears) - set(precision))
    if missing:
        raise ValueError(f"precision_map: no entry for quantized layer(s) {missing}")
    if not quant_linears:
        raise ValueError("model: has no quantized linear layers; nothing to report")

    quant_weight_ids = set()
    quantizer_param_ids = set()
    linear_bits = 0.0
    linear_weights = 0
    weight_bytes = 0
    for name, layer in quant_linears.items():
        weight_bits = precision[name][0]
        n_weights = layer.out_features * layer.in_features
        linear_weights += n_weights
        if weight_bits is None:
            linear_bits += FP_BITS * n_weights
            weight_bytes += FP_BITS // 8 * n_weights
        else:
            linear_bits += n_weights * (weight_bits + SCALE_BITS / layer.in_features)
            weight_bytes += math.ceil(weight_bits * n_weights / 8)
            weight_bytes += SCALE_BITS // 8 * layer.out_features
        quant_weight_ids.add(id(layer.weight))
        bias = getattr(layer, "bias", None)
        quantizer_param_ids |= {
            id(p) for p in layer.parameters() if p is not layer.weight and p is not bias
        }

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
