"""Learnable symmetric fake-quantizers with their own parameters per bit width (the layers
that use them, ``QuantLinear`` and ``QuantEmbedding``, are in ``quant_modules``).

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

    def quantize_rows(
        self, weight: torch.Tensor, ids: torch.Tensor, padding_idx: int | None = None
    ) -> torch.Tensor:
        """``forward(weight)[ids]`` without quantizing the rows nobody looked up.

        The embedding look-up of a quantized table: the gathered rows and their per-row steps
        are quantized, with the step gradient scaled as for the whole table (same
        ``g``), so values and gradients equal those of quantize-then-gather.
        ``padding_idx``'s row gets no gradient, as in ``nn.Embedding``.
        """
        step = self._step_for(weight)  # (rows, 1) per channel, else (1,)
        rows = F.embedding(ids, weight, padding_idx)  # (*ids, dim)
        if step.dim() == 2:
            step = F.embedding(ids, step, padding_idx)  # (*ids, 1)
        return lsq_fake_quant(rows.float(), step, self.qn, self.qp).to(weight.dtype)

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

    def quantize_rows(
        self, weight: torch.Tensor, ids: torch.Tensor, bits: int, padding_idx: int | None = None
    ) -> torch.Tensor:
        """``forward(weight, bits)[ids]``, quantizing only the looked-up rows."""
        return self._quantizer(bits).quantize_rows(weight, ids, padding_idx)

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

    def _scaled_step(self, weight: torch.Tensor, bits: int) -> torch.Tensor:
        """The shared step, grad-scaled for width ``bits``, shape ``(out, 1)``."""
        if bits not in self._bit_widths:
            raise ValueError(f"bits: {bits!r} is not one of this quantizer's {self._bit_widths}")
        if not self._is_initialized():
            self.initialize(weight)
        _, qp = quant_range(bits)
        g = 1.0 / math.sqrt(weight[0].numel() * qp)
        return grad_scale(self.step.clamp_min(_MIN_STEP), g)[:, None]

    def _integer_grid(self, values: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
        """``q_b * k`` as float, shape of ``values`` (``step`` broadcasts); differentiable."""
        qn8, qp8 = quant_range(self.base_bits)
        qn, qp = quant_range(bits)
        q8 = round_ste(torch.clamp(values.float() / step, qn8, qp8))
        k = 2 ** (self.base_bits - bits)
        return round_ste(torch.clamp(q8 / k, qn, qp)) * k

    def forward(self, weight: torch.Tensor, bits: int | None) -> torch.Tensor:
        """Fake-quantize ``weight`` ``(out, in)`` at ``bits`` (``None``: unchanged)."""
        if bits is None:
            return weight
        step = self._scaled_step(weight, bits)
        return (self._integer_grid(weight, step, bits) * step).to(weight.dtype)

    def quantize_rows(
        self, weight: torch.Tensor, ids: torch.Tensor, bits: int, padding_idx: int | None = None
    ) -> torch.Tensor:
        """``forward(weight, bits)[ids]``, quantizing only the looked-up rows (see
        :meth:`LsqQuantizer.quantize_rows`)."""
        step = F.embedding(ids, self._scaled_step(weight, bits), padding_idx)  # (*ids, 1)
        rows = F.embedding(ids, weight, padding_idx)
        return (self._integer_grid(rows, step, bits) * step).to(weight.dtype)

    @torch.no_grad()
    def weight_codes(self, weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(codes int8 (out, in) in Qn_b..Qp_b, scale = s * 2^(8-b) float32 (out,))``."""
        step = self._scaled_step(weight, bits)
        grid = self._integer_grid(weight, step, bits)
        k = 2 ** (self.base_bits - bits)
        return (grid / k).to(torch.int8), (step[:, 0] * k).float()

    def extra_repr(self) -> str:
        return f"bit_widths={self._bit_widths}, channels={self.step.numel()}"
