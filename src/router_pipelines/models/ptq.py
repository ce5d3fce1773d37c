"""Post-training quantization of any causal LM into a multi-precision model (no QAT).

The model's linears are swapped for the switchable ``QuantLinear`` (one per-channel symmetric
quantizer per width, see :mod:`router_pipelines.models.quantization`) and every width's step
sizes are set from calibration batches by the MSE search, with no training: the seed's
"quantized model created using the main quantization pipeline", for a model that was never
switchable-trained. The result is a :class:`SwitchableLM`, so everything that takes one (the
precision router, the bit sweep, saving and loading) takes it.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM


def post_training_quantize(
    model: nn.Module,
    bit_widths: Sequence[int],
    calibration: Iterable[dict[str, torch.Tensor]],
    act_bits: Any = 8,
    step_init: str = "mse",
) -> SwitchableLM:
    """A multi-precision copy of ``model`` (``model`` itself is not changed).

    Args:
        model: any transformers causal LM (the base LM, or a hub/local model by name).
        bit_widths: the weight widths, each 2..8.
        calibration: batches with ``input_ids`` and ``attention_mask`` ``(B, T)``; the
            quantizers' steps come from the first batch (weights: MSE search per channel;
            activations: from that batch's inputs).
        act_bits: activation policy (see :class:`SwitchableConfig`).
        step_init: ``mse`` | ``lsq`` | ``max``.

    Raises:
        ValueError: a bad width, or no calibration batch.
    """
    config = SwitchableConfig(bit_widths=sorted(bit_widths), act_bits=act_bits, step_init=step_init)
    quantized = SwitchableLM.from_base(copy.deepcopy(model).eval(), config)
    batch = next(iter(calibration), None)
    if batch is None:
        raise ValueError("calibration: no batch to set the quantizer steps from")
    quantized.initialize_quantizers(batch["input_ids"], batch.get("attention_mask"))
    quantized.set_precision(None)
    return quantized.requires_grad_(False)


def load_causal_lm(name_or_path: str, trust_remote_code: bool = False) -> nn.Module:
    """A hub id or local folder as a causal LM (local files are read without the network)."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM

    local = Path(name_or_path).is_dir()
    return AutoModelForCausalLM.from_pretrained(
        name_or_path, trust_remote_code=trust_remote_code, local_files_only=local
    ).eval()
