"""The layers that use the quantizers of ``quantization``: :class:`QuantLinear` (weights and
inputs fake-quantized) and :class:`QuantEmbedding` (the table fake-quantized per row).

Both store float weights and switch width with ``set_bits``; ``None`` is full precision,
where they compute exactly what the module they replace computed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

from router_pipelines.models.quantization import MultiWidthQuantizer, NestedQuantizer

__all__ = ["QuantEmbedding", "QuantLinear"]


class QuantLinear(nn.Module):
    """A linear layer whose weights and inputs are fake-quantized at a switchable width.

    ``y = x_q @ W_q.T + b`` with ``W`` stored ``(out, in)``; ``weight_bits`` / ``act_bits``
    (``None`` = full precision, the default) pick the quantizer used in ``forward``.

    Args:
        weight: ``(out, in)`` parameter (reused, not copied: ties to it survive).
        bias: ``(out,)`` parameter or ``None``.
        weight_quantizer: :class:`MultiWidthQuantizer` (per channel) or :class:`NestedQuantizer`.
        act_quantizer: per-tensor :class:`MultiWidthQuantizer` for the input.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        bias: nn.Parameter | None,
        weight_quantizer: MultiWidthQuantizer | NestedQuantizer,
        act_quantizer: MultiWidthQuantizer,
    ) -> None:
        super().__init__()
        self.weight = weight
        self.bias = bias
        self.weight_quantizer = weight_quantizer
        self.act_quantizer = act_quantizer
        self.weight_bits: int | None = None
        self.act_bits: int | None = None

    @classmethod
    def from_module(
        cls,
        module: nn.Linear | Conv1D,
        weight_quantizer: MultiWidthQuantizer | NestedQuantizer,
        act_quantizer: MultiWidthQuantizer,
    ) -> QuantLinear:
        """Build from ``nn.Linear`` (weight reused) or ``Conv1D`` (weight ``(in, out)`` transposed)."""
        if isinstance(module, Conv1D):
            weight = nn.Parameter(module.weight.detach().t().contiguous())
        elif isinstance(module, nn.Linear):
            weight = module.weight
        else:
            raise TypeError(f"module: expected nn.Linear or Conv1D, got {type(module).__name__}")
        quantizer_device = weight.device
        return cls(
            weight,
            module.bias,
            weight_quantizer.to(quantizer_device),
            act_quantizer.to(quantizer_device),
        )

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    def set_bits(self, weight_bits: int | None, act_bits: int | None) -> None:
        """Select the widths used by ``forward`` (``None`` = full precision)."""
        for key, bits, quantizer in (
            ("weight_bits", weight_bits, self.weight_quantizer),
            ("act_bits", act_bits, self.act_quantizer),
        ):
            if bits is not None and bits not in quantizer.bit_widths:
                raise ValueError(f"{key}: {bits!r} is not one of {quantizer.bit_widths}")
        self.weight_bits, self.act_bits = weight_bits, act_bits

    def is_initialized(self) -> bool:
        """Whether the quantizers of the current widths have their steps set."""
        return (
            self.weight_bits is None or self.weight_quantizer.is_initialized(self.weight_bits)
        ) and (self.act_bits is None or self.act_quantizer.is_initialized(self.act_bits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., in)`` -> ``(..., out)``."""
        x = self.act_quantizer(x, self.act_bits)
        weight = self.weight_quantizer(self.weight, self.weight_bits)
        return F.linear(x, weight, self.bias)

    def weight_codes(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer weights at ``bits`` for packed kernels.

        Returns:
            ``codes`` int8 ``(out, in)`` and ``scale`` float32 ``(out,)`` such that
            ``codes.float() * scale[:, None]`` is the fake-quantized weight at ``bits``.
        """
        return self.weight_quantizer.weight_codes(self.weight, bits)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, weight_bits={self.weight_bits}, "
            f"act_bits={self.act_bits}"
        )


class QuantEmbedding(nn.Module):
    """A token/position embedding whose table is fake-quantized per row at a switchable width.

    Row ``i`` of the ``(num_embeddings, embedding_dim)`` table has its own step (one per
    "output channel", as for a linear layer's rows), so a tied LM head (``nn.Linear`` with the
    same ``(vocab, hidden)`` weight) and this embedding can share one quantizer: one table of
    codes and scales serves both (see ``make_switchable``). Only the looked-up rows are
    quantized in ``forward``; values and gradients equal quantize-then-gather. Embedding
    outputs are not an activation to quantize (the next linear quantizes its own input), so
    there is no activation quantizer and ``act_bits`` is always ``None``.

    Args:
        weight: ``(num_embeddings, embedding_dim)`` parameter (reused, not copied).
        weight_quantizer: per-row :class:`MultiWidthQuantizer` or :class:`NestedQuantizer`.
        padding_idx: as in ``nn.Embedding``: that row gets no gradient.
    """

    def __init__(
        self,
        weight: nn.Parameter,
        weight_quantizer: MultiWidthQuantizer | NestedQuantizer,
        padding_idx: int | None = None,
    ) -> None:
        super().__init__()
        self.weight = weight
        self.weight_quantizer = weight_quantizer
        self.padding_idx = padding_idx
        self.weight_bits: int | None = None
        self.act_bits: int | None = None  # always None: kept so every quantized module has it

    @classmethod
    def from_module(
        cls, module: nn.Embedding, weight_quantizer: MultiWidthQuantizer | NestedQuantizer
    ) -> QuantEmbedding:
        """Build from ``nn.Embedding`` (weight reused, so ties to it survive).

        Raises:
            NotImplementedError: for ``max_norm``, ``sparse`` or ``scale_grad_by_freq``
                embeddings, whose look-up this layer does not reproduce.
        """
        if not isinstance(module, nn.Embedding):
            raise TypeError(f"module: expected nn.Embedding, got {type(module).__name__}")
        unsupported = [
            name
            for name, value in (
                ("max_norm", module.max_norm is not None),
                ("sparse", module.sparse),
                ("scale_grad_by_freq", module.scale_grad_by_freq),
            )
            if value
        ]
        if unsupported:
            raise NotImplementedError(
                f"module: nn.Embedding with {', '.join(unsupported)} set cannot be quantized"
            )
        return cls(module.weight, weight_quantizer.to(module.weight.device), module.padding_idx)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.weight.shape[1]

    def set_bits(self, weight_bits: int | None, act_bits: int | None = None) -> None:
        """Select the table width used by ``forward`` (``None`` = full precision)."""
        if weight_bits is not None and weight_bits not in self.weight_quantizer.bit_widths:
            raise ValueError(
                f"weight_bits: {weight_bits!r} is not one of {self.weight_quantizer.bit_widths}"
            )
        if act_bits is not None:
            raise ValueError(f"act_bits: embeddings have no activation quantizer, got {act_bits!r}")
        self.weight_bits = weight_bits

    def is_initialized(self) -> bool:
        """Whether the quantizer of the current width has its steps set."""
        return self.weight_bits is None or self.weight_quantizer.is_initialized(self.weight_bits)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids`` ``(...)`` -> ``(..., embedding_dim)``."""
        if self.weight_bits is None:
            return F.embedding(input_ids, self.weight, self.padding_idx)
        return self.weight_quantizer.quantize_rows(
            self.weight, input_ids, self.weight_bits, self.padding_idx
        )

    def weight_codes(self, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer table at ``bits``: ``codes`` int8 ``(num, dim)``, ``scale`` float32 ``(num,)``."""
        return self.weight_quantizer.weight_codes(self.weight, bits)

    def extra_repr(self) -> str:
        return (
            f"{self.num_embeddings}, {self.embedding_dim}, padding_idx={self.padding_idx}, "
            f"weight_bits={self.weight_bits}"
        )
