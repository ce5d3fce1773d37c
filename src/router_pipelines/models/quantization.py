"""Learnable symmetric fake-quantizers with their own parameters per bit width, and
:class:`QuantLinear`, the linear layer that uses them.

Conventions shared by every quantizer here:

* **Symmetric, narrow range.** ``b`` bits use the integer levels ``-Qp..Qp`` with
  ``Qp = 2^(b-1) - 1`` (so ``Qn = -Qp``; 2 bits is ternary {-1, 0, 1}). Why narrow: the grid
  is sign-symmetric (``q(-w) == -q(w)``), zero is exact, an int8 code never holds -128 (so
  it negates and re-scales without overflow), and the nested codes of
  :class:`NestedQuantizer` stay symmetric at every width. It costs one level (-2^(b-1)),
  which matters only at 2 bits, where ternary weights are a well-tested choice
  (TWN, BitNet b1.58).
* **LSQ** (Esser et al., 2020): ``q(x) = round(clamp(x / s, Qn, Qp)) * s`` with a
  straight-through round and a learnable step ``s`` whose gradient is scaled by
  ``g = 1 / sqrt(N * Qp)``, ``N`` = elements sharing one step.
* **Step init from data** on first use, by default by an MSE search over clipping levels
  (``init="mse"``). LSQ's own ``2 * mean|x| / sqrt(Qp)`` shrinks only as ``1/sqrt(Qp)``, so
  it is too coarse above 2 bits: on Gaussian weights its error relative to the MSE init is
  1.2x at 2 bits, 2.4x at 4 and ~28x at 8 (Student-t(4) weights: 1.03x, 1.2x, 18x);
  ``tests/models/test_quantization.py`` checks this ordering. ``"lsq"`` and ``"max"`` (no
  clipping; 3.9x worse at 2 bits) remain available. A buffer ``initialized`` (saved in the
  state dict) makes a reloaded quantizer keep its learned step.
* Weights: one step per output channel (``(out,)``); activations: one step per tensor.

``bits=None`` means full precision: the input is returned unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

MIN_BITS, MAX_BITS = 2, 8
STEP_INITS = ("mse", "lsq", "max")
_MIN_STEP = 1e-8  # keeps x / step finite for an all-zero channel or a step pushed to 0
_INIT_GRID = 80  # clipping levels tried by the MSE init (fractions of max|x|)


def check_bit_width(key: str, value: object) -> int:
    """Return ``value`` if it is an int bit width in ``MIN_BITS..MAX_BITS``, else raise.

    Raises:
        ValueError: ``"key: ..."`` naming the value and the allowed range.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_BITS <= value <= MAX_BITS:
        raise ValueError(
            f"{key}: {value!r} is not a valid bit width; use an int from {MIN_BITS} to {MAX_BITS}"
        )
    return value


def check_precision(key: str, value: object) -> int | None:
    """Like :func:`check_bit_width`, but also accepts ``None`` or ``"fp"`` (full precision)."""
    if value is None or value == "fp":
        return None
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    try:
        return check_bit_width(key, value)
    except ValueError:
        raise ValueError(
            f"{key}: {value!r} is not a valid precision; use an int from {MIN_BITS} to "
            f"{MAX_BITS}, or None / 'fp' for full precision"
        ) from None


def quant_range(bits: int) -> tuple[int, int]:
    """Integer levels ``(Qn, Qp)`` of the symmetric narrow-range grid for ``bits``."""
    qp = 2 ** (bits - 1) - 1
    return -qp, qp


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` in the forward pass, identity gradient (straight-through estimator)."""
    return x + (x.round() - x).detach()


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` in the forward pass, gradient multiplied by ``scale`` (LSQ's grad_scale).

    Written as ``x + (x*g - (x*g).detach())`` rather than LSQ's ``(x - x*g).detach() + x*g``:
    the added term is exactly 0, so the forward value is bit-identical to ``x`` and
    ``weight_codes`` reproduces the fake-quantized weight exactly.
    """
    scaled = x * scale
    return x.detach() + (scaled - scaled.detach()) if x.requires_grad else x


def lsq_fake_quant(x: torch.Tensor, step: torch.Tensor, qn: int, qp: int) -> torch.Tensor:
    """``round_ste(clamp(x / step, qn, qp)) * step``; ``step`` broadcasts against ``x``."""
    return round_ste(torch.clamp(x / step, qn, qp)) * step


def init_step(x: torch.Tensor, bits: int, per_channel: bool, method: str = "mse") -> torch.Tensor:
    """Data-driven initial step size(s) for quantizing ``x`` at ``bits``.

    Args:
        x: weights ``(out, in)`` when ``per_channel``, else any tensor.
        bits: width of the grid.
        per_channel: one step per row of ``x`` (else one for the whole tensor).
        method: ``"mse"`` (clipping level minimising the squared error), ``"lsq"``
            (``2 * mean|x| / sqrt(Qp)``) or ``"max"`` (``max|x| / Qp``, no clipping).

    Returns:
        float32 steps, shape ``(out,)`` or ``(1,)``.
    """
    _, qp = quant_range(bits)
    rows = x.detach().float().reshape(x.shape[0] if per_channel else 1, -1)
    if method == "lsq":
        step = 2 * rows.abs().mean(dim=1) / math.sqrt(qp)
    elif method == "max":
        step = rows.abs().amax(dim=1) / qp
    elif method == "mse":
        step = _mse_search(rows, [bits], base_bits=bits)
    else:
        raise ValueError(f"init: {method!r} is not allowed; choose one of {list(STEP_INITS)}")
    return step.clamp_min(_MIN_STEP)


def _mse_search(rows: torch.Tensor, widths: list[int], base_bits: int) -> torch.Tensor:
    """Per-row step of the ``base_bits`` grid minimising ``sum_b log(MSE_b)`` over ``widths``.

    With one width this is the plain MSE-optimal clipping level. With several (nested codes,
    where width b uses step ``s * 2^(base_bits - b)``) the log keeps the 8-bit error from
    being swamped by the 2-bit one, so no width is sacrificed entirely.

    Args:
        rows: ``(R, N)`` float32 values; one step per row.
    """
    _, base_qp = quant_range(base_bits)
    max_abs = rows.abs().amax(dim=1).clamp_min(_MIN_STEP)  # (R,)
    best_err = torch.full_like(max_abs, float("inf"))
    best_step = max_abs / base_qp
    for frac in torch.linspace(1.0 / _INIT_GRID, 1.0, _INIT_GRID).tolist():
        step = frac * max_abs / base_qp  # (R,)
        err = torch.zeros_like(max_abs)
        for bits in widths:
            qn, qp = quant_range(bits)
            width_step = (step * 2 ** (base_bits - bits))[:, None]
            quantized = torch.clamp(torch.round(rows / width_step), qn, qp) * width_step
            err += torch.log((quantized - rows).pow(2).mean(dim=1) + 1e-30)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_step = torch.where(better, step, best_step)
    return best_step


def _mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """Average ``value`` over data-parallel ranks, so every rank starts from the same step.

    Activation steps come from each rank's own first batch; without this the replicas
    would hold different parameters for the whole run.
    """
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


class _DataInitialized(nn.Module):
    """Holds the ``initialized`` buffer (saved in the state dict) and a Python mirror of it,
    so that ``forward`` does not read a device tensor, a GPU sync, on every call."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("initialized", torch.tensor(False))
        self._known_initialized = False
        self.register_load_state_dict_post_hook(_forget_known_initialized)

    def _is_initialized(self) -> bool:
        if not self._known_initialized:
            self._known_initialized = bool(self.initialized)
        return self._known_initialized

    def _mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self._known_initialized = True


def _forget_known_initialized(module: _DataInitialized, incompatible_keys: object) -> None:
    """After ``load_state_dict`` the buffer is the truth again (a module-level function, so
    the module stays picklable)."""
    module._known_initialized = False


class LsqQuantizer(_DataInitialized):
    """LSQ fake-quantizer at one bit width, per-channel (dim 0) or per-tensor.

    Args:
        bits: 2..8.
        num_channels: steps along dim 0 of the input (1 = per-tensor).
        init: step init method, one of ``STEP_INITS``.
    """

    def __init__(self, bits: int, num_channels: int = 1, init: str = "mse") -> None:
        super().__init__()
        self.bits = check_bit_width("bits", bits)
        if init not in STEP_INITS:
            raise ValueError(f"init: {init!r} is not allowed; choose one of {list(STEP_INITS)}")
        self.qn, self.qp = quant_range(bits)
        self.init = init
        self.step = nn.Parameter(torch.ones(num_channels))

    @torch.no_grad()
    def initialize(self, x: torch.Tensor) -> None:
        """Set the step from ``x`` (called by the first forward)."""
        step = init_step(x, self.bits, per_channel=self.step.numel() > 1, method=self.init)
        self.step.copy_(_mean_across_ranks(step.to(self.step.device)))
        self._mark_initialized()

    def _step_for(self, x: torch.Tensor) -> torch.Tensor:
        """The (grad-scaled) step, shaped to broadcast over ``x``."""
        if not self._is_initialized():
            self.initialize(x)
        channels = self.step.numel()
        if channels > 1 and (x.dim() != 2 or x.shape[0] != channels):
            raise ValueError(
                f"per-channel quantizer with {channels} channels got input shape {tuple(x.shape)}"
            )
        g = 1.0 / math.sqrt(x.numel() / channels * self.qp)
        step = grad_scale(self.step.clamp_min(_MIN_STEP), g)
        return step[:, None] if channels > 1 else step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Fake-quantize ``x`` (same shape and dtype; computed in float32)."""
        return lsq_fake_quant(x.float(), self._step_for(x), self.qn, self.qp).to(x.dtype)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (int8, shape of ``x``) and the step (float32, ``(channels,)``)."""
        step = self._step_for(x)
        codes = torch.clamp(torch.round(x.float() / step), self.qn, self.qp).to(torch.int8)
        return codes, step.reshape(-1).float()

    def extra_repr(self) -> str:
        return f"bits={self.bits}, channels={self.step.numel()}, init={self.init!r}"


class MultiWidthQuantizer(nn.Module):
    """One independent :class:`LsqQuantizer` per bit width (AdaBits: no shared clipping).

    Args:
        bit_widths: the widths it can quantize to.
        per_channel: one step per output channel (weights) instead of one per tensor.
        channels: output channels (used when ``per_channel``).
        init: step init method.
    """

    def __init__(
        self, bit_widths: list[int], per_channel: bool, channels: int = 1, init: str = "mse"
    ) -> None:
        super().__init__()
        num_steps = channels if per_channel else 1
        widths = sorted({check_bit_width("bit_widths", b) for b in bit_widths})
        self.quantizers = nn.ModuleDict({str(b): LsqQuantizer(b, num_steps, init) for b in widths})

    @property
    def bit_widths(self) -> list[int]:
        return [int(b) for b in self.quantizers]

    def _quantizer(self, bits: int) -> LsqQuantizer:
        if str(bits) not in self.quantizers:
            raise ValueError(f"bits: {bits!r} is not one of this quantizer's {self.bit_widths}")
        return self.quantizers[str(bits)]

    def forward(self, x: torch.Tensor, bits: int | None) -> torch.Tensor:
        """Fake-quantize ``x`` at ``bits`` (``None``: return ``x`` unchanged)."""
        return x if bits is None else self._quantizer(bits)(x)

    def is_initialized(self, bits: int) -> bool:
        """Whether the step for ``bits`` has been set from data (or loaded)."""
        return self._quantizer(bits)._is_initialized()

    def weight_codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes int8 (out, in), scale float32 (out,))`` with
        ``codes.float() * scale[:, None] == forward(weight, bits)``."""
        codes, step = self._quantizer(bits).codes(weight)
        return codes, step.expand(weight.shape[0]).contiguous()


class NestedQuantizer(_DataInitialized):
    """Matryoshka codes: one int8 per-channel grid whose top bits serve every lower width.

    With the shared learnable step ``s`` (per output channel) and ``q8 = round(clamp(w / s))``
    in ``-127..127``, width ``b`` keeps the ``b`` most significant bits::

        k = 2^(8 - b);  q_b = clamp(round(q8 / k), Qn_b, Qp_b);  w_b = q_b * k * s

    (straight-through rounds), so a single stored int8 tensor plus ``s`` gives the weights
    at every width. The LSQ gradient scale at width ``b`` uses ``Qp_b``. The init picks ``s``
    minimising the sum of log-MSEs over all ``bit_widths`` (see :func:`_mse_search`); before
    training, the shared grid costs error against per-width steps: on Gaussian weights
    1.33x / 1.22x / 1.0x at 2 / 4 / 8 bits (Student-t(4): 1.8x / 1.45x / 1.0x). Co-training
    the widths (``joint``) is what closes that gap in Matryoshka Quantization.

    Args:
        bit_widths: widths it serves (each 2..8).
        channels: output channels (one shared step each).
    """

    base_bits = MAX_BITS

    def __init__(self, bit_widths: list[int], channels: int) -> None:
        super().__init__()
        self._bit_widths = sorted({check_bit_width("bit_widths", b) for b in bit_widths})
        self.step = nn.Parameter(torch.ones(channels))

    @property
    def bit_widths(self) -> list[int]:
        return list(self._bit_widths)

    def is_initialized(self, bits: int) -> bool:
        """Whether the shared step has been set from data (or loaded); the same for every width."""
        return self._is_initialized()

    @torch.no_grad()
    def initialize(self, weight: torch.Tensor) -> None:
        """Set the shared step from ``weight`` ``(out, in)``."""
        rows = weight.detach().float().reshape(weight.shape[0], -1)
        step = _mse_search(rows, self._bit_widths, self.base_bits).clamp_min(_MIN_STEP)
        self.step.copy_(_mean_across_ranks(step.to(self.step.device)))
        self._mark_initialized()

    def _integer_grid(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(q_b * k as float (out, in), grad-scaled step (out, 1))``; differentiable."""
        if bits not in self._bit_widths:
            raise ValueError(f"bits: {bits!r} is not one of this quantizer's {self._bit_widths}")
        if not self._is_initialized():
            self.initialize(weight)
        qn8, qp8 = quant_range(self.base_bits)
        qn, qp = quant_range(bits)
        g = 1.0 / math.sqrt(weight[0].numel() * qp)
        step = grad_scale(self.step.clamp_min(_MIN_STEP), g)[:, None]
        q8 = round_ste(torch.clamp(weight.float() / step, qn8, qp8))
        k = 2 ** (self.base_bits - bits)
        return round_ste(torch.clamp(q8 / k, qn, qp)) * k, step

    def forward(self, weight: torch.Tensor, bits: int | None) -> torch.Tensor:
        """Fake-quantize ``weight`` ``(out, in)`` at ``bits`` (``None``: unchanged)."""
        if bits is None:
            return weight
        grid, step = self._integer_grid(weight, bits)
        return (grid * step).to(weight.dtype)

    @torch.no_grad()
    def weight_codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes int8 (out, in) in Qn_b..Qp_b, scale = s * 2^(8-b) float32 (out,))``."""
        grid, step = self._integer_grid(weight, bits)
        k = 2 ** (self.base_bits - bits)
        return (grid / k).to(torch.int8), (step[:, 0] * k).float()

    def extra_repr(self) -> str:
        return f"bit_widths={self._bit_widths}, channels={self.step.numel()}"


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
