"""Packed low-bit linears for real (not simulated) weight-only inference.

A :class:`~router_pipelines.models.quantization.QuantLinear` simulates quantization: it stores
float weights and rounds them on every forward ("fake quantization"). The modules here store the
integer codes themselves and call PyTorch's weight-only kernels, so their speed is what an
int8/int4 deployment would see:

- :class:`PackedInt8Linear`: ``torch.ops.aten._weight_int8pack_mm`` (int8 codes ``(out, in)``,
  one scale per output channel; x in fp32, bf16 or fp16, scales cast to the dtype of x).
- :class:`PackedInt4Linear`: the "tinygemm" int4 kernels. On the CPU
  ``_convert_weight_to_int4pack_for_cpu`` + ``_weight_int4pack_mm_for_cpu`` (x in fp32, bf16 or
  fp16); on CUDA ``_convert_weight_to_int4pack`` + ``_weight_int4pack_mm`` (bf16 only, so x is
  cast to bf16 and back). These kernels store unsigned codes ``u`` in 0..15 and dequantize
  ``w = (u - 8) * scale + zero`` per group of ``group_size`` input columns. Our signed symmetric
  code ``c`` maps exactly with ``u = c + 8`` and ``zero = 0``. The kernels only take group sizes
  32, 64, 128 or 256, so the one per-channel scale is repeated over every group of the largest
  allowed size that divides ``in_features``.

Compute dtype: on this CPU (torch 2.13, AVX-512/AMX) the kernels are fast only with bf16 x;
with fp32 x they fall back to a slow path (measured at 384x1024: 10-20x slower than bf16 x for
one row, 40-120x for 512 rows). Each module therefore takes ``compute_dtype``: x is cast to it for
the kernel and the output cast back to the dtype of x (``None``: run in the dtype of x).

Quantized embeddings (``QuantEmbedding``) become :class:`PackedEmbedding`: int8 codes and
one scale per row, dequantized after the look-up (a gather needs no kernel). Codes are stored
one per byte at every width, so a 4-bit table takes 8 bits per code here.

Difference from the simulated model: the packed modules are **weight-only**. Activation
fake-quantization (``act_bits``) is dropped, so packed speed runs and fake-quantized accuracy
runs differ in the activations. Accuracy is always measured on the fake-quantized model.

Shape limits (checked with a clear error, found by trying the kernels in torch 2.13):
int4 on the CPU needs ``in_features % 32 == 0`` and ``out_features % 16 == 0``; on CUDA
``in_features % 32 == 0`` and ``out_features % 8 == 0``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from router_pipelines.models.quant_modules import QuantEmbedding

INT4_GROUP_SIZES = (256, 128, 64, 32)  # largest first: fewer groups, less scale traffic
PACKED_WIDTHS = (8, 4)
COMPUTE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def weight_codes(quant_linear: nn.Module, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes and per-row scales of a QuantLinear's weight at ``bits``.

    Uses ``quant_linear.weight_codes(bits)`` when the layer has it, else its quantizer's
    ``weight_quantizer.weight_codes(weight, bits)``.

    Returns:
        ``(codes, scale)``: codes ``torch.int8 (out, in)``, scale ``float32 (out,)`` with
        ``codes.float() * scale[:, None]`` the fake-quantized weight.
    """
    if hasattr(quant_linear, "weight_codes"):
        codes, scale = quant_linear.weight_codes(bits)
    else:
        codes, scale = quant_linear.weight_quantizer.weight_codes(quant_linear.weight, bits)
    return codes.detach().to(torch.int8), scale.detach().to(torch.float32).reshape(-1)


class _PackedLinear(nn.Module):
    """What the packed layers share: building one from a QuantLinear's codes at ``BITS``."""

    BITS: int

    @classmethod
    def from_quant_linear(
        cls, quant_linear: nn.Module, compute_dtype: torch.dtype | None = None
    ) -> _PackedLinear:
        """Pack ``quant_linear``'s ``BITS``-bit codes."""
        codes, scale = weight_codes(quant_linear, cls.BITS)
        return cls(codes, scale, quant_linear.bias, compute_dtype)


class PackedInt8Linear(_PackedLinear):
    """Weight-only int8 linear: ``y = x @ (codes * scale[:, None]).T + bias``.

    Args:
        codes: ``int8 (out, in)`` signed codes.
        scale: ``(out,)`` per-output-channel scale.
        bias: ``(out,)`` or ``None``.
        compute_dtype: dtype the kernel runs in (``None``: the dtype of x).
    """

    BITS = 8

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        _check_codes(codes, scale, bias, low=-128, high=127)
        self.out_features, self.in_features = codes.shape
        self.compute_dtype = _check_compute_dtype(compute_dtype)
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in) -> (..., out)`` in the dtype of x."""
        x2 = _kernel_input(x, self.in_features, self.compute_dtype)  # (N, in)
        y = torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scale.to(x2.dtype))
        return _kernel_output(y, self.bias, x, self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


class PackedInt4Linear(_PackedLinear):
    """Weight-only int4 linear on the tinygemm kernels (see the module docstring).

    Args:
        codes: ``int8 (out, in)`` signed codes in -8..7.
        scale: ``(out,)`` per-output-channel scale.
        bias: ``(out,)`` or ``None``.
        compute_dtype: dtype the CPU kernel runs in (``None``: the dtype of x); CUDA is
            always bf16.

    The weight is packed for the device ``codes`` lives on; move the source model first, then
    pack (the CPU and CUDA packed layouts differ).
    """

    BITS = 4

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        compute_dtype: torch.dtype | None = None,
    ):
        super().__init__()
        _check_codes(codes, scale, bias, low=-8, high=7)
        self.compute_dtype = _check_compute_dtype(compute_dtype)
        out_features, in_features = codes.shape
        self.out_features, self.in_features = out_features, in_features
        self.on_cuda = codes.device.type == "cuda"
        if self.on_cuda:  # the CUDA kernel is bf16-only
            self.compute_dtype = torch.bfloat16
        _check_int4_shape(out_features, in_features, self.on_cuda)
        self.group_size = next(g for g in INT4_GROUP_SIZES if in_features % g == 0)
        unsigned = codes.to(torch.int32) + 8  # (out, in) in 0..15
        if self.on_cuda:
            # CUDA wants uint8 (out, in/2): even column in the high nibble.
            pairs = (unsigned[:, ::2] << 4 | unsigned[:, 1::2]).to(torch.uint8).contiguous()
            inner_k_tiles = next(t for t in (8, 4, 2) if in_features % (t * 16) == 0)
            packed = torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles)
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(unsigned.contiguous(), 1)
        self.register_buffer("packed", packed)
        n_groups = in_features // self.group_size
        scales_and_zeros = torch.zeros(n_groups, out_features, 2, device=codes.device)
        scales_and_zeros[:, :, 0] = scale.to(torch.float32)[None, :]  # zero stays 0: symmetric
        self.register_buffer("scales_and_zeros", scales_and_zeros)
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (..., in) -> (..., out)`` in the dtype of x."""
        if (x.device.type == "cuda") != self.on_cuda:
            raise RuntimeError(
                f"PackedInt4Linear was packed for {'cuda' if self.on_cuda else 'cpu'} but got x on "
                f"{x.device}; move the source model to that device and pack again"
            )
        x2 = _kernel_input(x, self.in_features, self.compute_dtype)  # (N, in)
        scales_and_zeros = self.scales_and_zeros.to(x2.dtype)
        if self.on_cuda:
            y = torch.ops.aten._weight_int4pack_mm(
                x2, self.packed, self.group_size, scales_and_zeros
            )
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(
                x2, self.packed, self.group_size, scales_and_zeros
            )
        return _kernel_output(y, self.bias, x, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bits=4, "
            f"group_size={self.group_size}"
        )


class PackedEmbedding(nn.Module):
    """An embedding stored as int8 codes ``(num, dim)`` and a float32 scale per row.

    ``forward`` gathers the rows' codes and scales and returns ``codes * scale`` in ``dtype``,
    exactly the fake-quantized ``QuantEmbedding`` output at the width the codes came from.
    """

    def __init__(
        self,
        codes: torch.Tensor,
        scale: torch.Tensor,
        padding_idx: int | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        _check_codes(codes, scale, None, low=-128, high=127)
        self.num_embeddings, self.embedding_dim = codes.shape
        self.padding_idx = padding_idx
        self.dtype = dtype
        self.register_buffer("codes", codes.contiguous())
        self.register_buffer("scale", scale.to(torch.float32).contiguous())

    @classmethod
    def from_quant_embedding(cls, embedding: nn.Module, bits: int) -> PackedEmbedding:
        """Pack ``embedding``'s (a ``QuantEmbedding``) ``bits``-bit codes."""
        codes, scale = weight_codes(embedding, bits)
        return cls(codes, scale, embedding.padding_idx, embedding.weight.dtype)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``input_ids (...) -> (..., embedding_dim)`` in ``dtype``."""
        rows = self.codes[input_ids].float() * self.scale[input_ids][..., None]
        return rows.to(self.dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, int8 codes"


def packed_linear(
    quant_linear: nn.Module, bits: int, compute_dtype: torch.dtype | None = None
) -> _PackedLinear:
    """``quant_linear``'s ``bits``-bit codes on the narrowest packed kernel that holds them.

    2..4-bit codes run on the int4 kernel and 5..8-bit codes on the int8 one. The codes are
    exact in both, so a 2-bit layer computes its own 2-bit weights at int4 speed: the kernel
    is real, its speed is that of the wider kernel. This is what a per-layer mix of widths
    (:func:`~router_pipelines.models.precision_router.pack_precision_router`) runs on.

    Raises:
        NotImplementedError: ``bits`` outside 2..8 (no kernel), or a shape the int4 kernel
            cannot take (the message names the shape).
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise NotImplementedError(
            f"bits: no packed kernel for {bits!r}-bit weights; 2..4-bit codes run on the int4 "
            "kernel and 5..8-bit codes on the int8 one"
        )
    codes, scale = weight_codes(quant_linear, bits)
    if bits > 4:
        return PackedInt8Linear(codes, scale, quant_linear.bias, compute_dtype)
    try:
        _check_int4_shape(codes.shape[0], codes.shape[1], quant_linear.weight.device.type == "cuda")
    except ValueError as err:
        raise NotImplementedError(str(err)) from err
    return PackedInt4Linear(codes, scale, quant_linear.bias, compute_dtype)


def pack_switchable_model(
    model: nn.Module, bits: int, compute_dtype: torch.dtype | None = None
) -> nn.Module:
    """A copy of ``model`` at uniform ``bits`` with every QuantLinear replaced by a packed one
    and every QuantEmbedding by a :class:`PackedEmbedding`.

    The copy is set to ``set_precision(bits)`` first; ``model`` itself is not changed.
    Weight-only: activation fake-quantization is dropped (module docstring). The rest of the
    model (norms, attention, unquantized embeddings and LM head) stays as it was, in its own
    dtype.

    Args:
        model: a ``SwitchableLM`` (``set_precision``, ``quant_linears``).
        bits: 8 (int8 kernel) or 4 (int4 kernel).
        compute_dtype: dtype the packed kernels run in (``None``: the activations' dtype);
            ``torch.bfloat16`` is the fast one on CPUs with AVX-512-BF16/AMX.

    Raises:
        NotImplementedError: for any other width, or a layer shape the int4 kernel cannot take
            (the caller labels such configurations ``simulated``).
        ValueError: ``bits`` is not one of the model's widths.
    """
    if isinstance(bits, bool) or bits not in PACKED_WIDTHS:
        raise NotImplementedError(
            f"bits: no packed kernel for {bits!r}-bit weights; packed widths are "
            f"{list(PACKED_WIDTHS)} (run other widths as 'simulated' fake quantization)"
        )
    widths = model.switchable_config.bit_widths
    if bits not in widths:
        raise ValueError(f"bits: {bits} is not a width of this model; its widths are {widths}")
    if bits == 4:  # check every shape before the (possibly large) copy
        for name, layer in model.quant_linears().items():
            on_cuda = layer.weight.device.type == "cuda"
            try:
                _check_int4_shape(layer.out_features, layer.in_features, on_cuda)
            except ValueError as err:
                raise NotImplementedError(f"{name}: {err}") from err
    packed_model = copy.deepcopy(model)
    packed_model.set_precision(bits)
    names = {id(module): name for name, module in packed_model.named_modules()}
    for layer in packed_model.quant_modules().values():
        parent_name, _, attr = names[id(layer)].rpartition(".")
        parent = packed_model.get_submodule(parent_name)
        if isinstance(layer, QuantEmbedding):
            packed = PackedEmbedding.from_quant_embedding(layer, bits)
        else:
            packed = packed_linear(layer, bits, compute_dtype)
        setattr(parent, attr, packed)
    return packed_model


def _kernel_input(x: torch.Tensor, in_features: int, dtype: torch.dtype | None) -> torch.Tensor:
    """``(..., in) -> (N, in)``: the kernels take 2-D, row-major x in the compute dtype."""
    return x.reshape(-1, in_features).to(dtype or x.dtype).contiguous()


def _kernel_output(
    y: torch.Tensor, bias: torch.Tensor | None, x: torch.Tensor, out_features: int
) -> torch.Tensor:
    """``(N, out) -> (..., out)`` in the dtype of x, bias added."""
    y = y.to(x.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.reshape(*x.shape[:-1], out_features)


def _check_compute_dtype(dtype: torch.dtype | None) -> torch.dtype | None:
    if dtype is not None and dtype not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype: {dtype} is not allowed; choose one of {COMPUTE_DTYPES}")
    return dtype


def _check_codes(
    codes: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, low: int, high: int
) -> None:
    if codes.dtype != torch.int8 or codes.dim() != 2:
        raise ValueError(
            f"codes: expected a 2-D int8 tensor, got {codes.dtype} {tuple(codes.shape)}"
        )
    if scale.shape != (codes.shape[0],):
        raise ValueError(f"scale: expected shape ({codes.shape[0]},), got {tuple(scale.shape)}")
    if bias is not None and bias.shape != (codes.shape[0],):
        raise ValueError(f"bias: expected shape ({codes.shape[0]},), got {tuple(bias.shape)}")
    if codes.numel() and (int(codes.min()) < low or int(codes.max()) > high):
        raise ValueError(
            f"codes: values must lie in {low}..{high}, got {int(codes.min())}..{int(codes.max())}"
        )


def _check_int4_shape(out_features: int, in_features: int, on_cuda: bool) -> None:
    out_multiple = 8 if on_cuda else 16
    if in_features % 32 or out_features % out_multiple:
        raise ValueError(
            f"the int4 kernel needs in_features % 32 == 0 and out_features % {out_multiple} == 0, "
            f"got in_features={in_features}, out_features={out_features}"
        )
