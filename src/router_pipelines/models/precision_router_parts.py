"""The parts of the precision router (see :mod:`.precision_router`): its config, the
per-block router, the routed linear, the differentiable choice and the bits tally."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from router_pipelines.config import check_bool, check_choice, check_int, check_positive
from router_pipelines.models.packed import packed_linear
from router_pipelines.models.quant_modules import QuantLinear

GRANULARITIES = ("sequence", "token")
CHOICES = ("straight_through", "neighbour_mix")


@dataclass
class RouterConfig:
    """How the routers decide (one router per decoder block)."""

    granularity: str = "sequence"  # sequence (pooled prompt, decided once) | token
    hidden_size: int = 32  # router MLP width; 0: a linear router
    norm_feature: bool = True  # add log ||h|| of the block input
    delta_feature: bool = False  # add DP-LLM's estimate of the output change between widths
    delta_rank: int = 16  # random projection size of that estimate
    choice: str = "straight_through"  # straight_through | neighbour_mix
    gumbel: bool = False  # Gumbel noise on the logits while training
    temperature: float = 1.0  # softmax temperature of the training choice
    prefix_tokens: int | None = None  # sequence routing pools the first N tokens (null: all)
    seed: int = 0  # router initialisation and the delta projection

    def __post_init__(self) -> None:
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("choice", self.choice, CHOICES)
        check_int("hidden_size", self.hidden_size, minimum=0)
        check_int("delta_rank", self.delta_rank, minimum=1)
        check_int("seed", self.seed, minimum=0)
        for name in ("norm_feature", "delta_feature", "gumbel"):
            check_bool(name, getattr(self, name))
        check_positive("temperature", self.temperature)
        if self.prefix_tokens is not None:
            check_int("prefix_tokens", self.prefix_tokens, minimum=1)


class LayerRouter(nn.Module):
    """Features ``(..., F)`` -> logits ``(..., n_widths)``; starts favouring high widths."""

    def __init__(self, in_features: int, n_widths: int, hidden_size: int) -> None:
        super().__init__()
        if hidden_size:
            self.net = nn.Sequential(
                nn.Linear(in_features, hidden_size), nn.GELU(), nn.Linear(hidden_size, n_widths)
            )
        else:
            self.net = nn.Sequential(nn.Linear(in_features, n_widths))
        last = self.net[-1]
        nn.init.normal_(last.weight, std=0.02)
        with torch.no_grad():  # a fresh router starts near the highest width, not at random
            last.bias.copy_(torch.linspace(0.0, 2.0, n_widths))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float())

    def flops_per_decision(self) -> int:
        return sum(2 * m.in_features * m.out_features for m in self.net if isinstance(m, nn.Linear))


class RoutedQuantLinear(QuantLinear):
    """A :class:`QuantLinear` whose output mixes its widths with per-row ``gates``.

    ``gates`` ``(B, T or 1, n_widths)`` (set by the block's router before the block runs)
    weights the outputs at ``widths``; ``None`` is the plain ``QuantLinear``. Built from an
    existing layer, sharing its weight, bias and quantizers (same state-dict keys).
    """

    def __init__(self, layer: QuantLinear, widths: Sequence[int], act_widths: Sequence[Any]):
        super().__init__(layer.weight, layer.bias, layer.weight_quantizer, layer.act_quantizer)
        self.weight_bits, self.act_bits = layer.weight_bits, layer.act_bits
        self.widths = list(widths)
        self.act_widths = list(act_widths)
        self.gates: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gates is None:
            return super().forward(x)
        gates = self.gates.to(x.dtype)
        out = None
        for index, (bits, act) in enumerate(zip(self.widths, self.act_widths, strict=True)):
            gate = gates[..., index : index + 1]  # (B, T or 1, 1)
            if not gate.requires_grad and not bool(gate.any()):
                continue  # a hard choice that no row makes: skip the width
            y = F.linear(
                self.act_quantizer(x, act), self.weight_quantizer(self.weight, bits), self.bias
            )
            out = y * gate if out is None else out + y * gate
        if out is None:
            raise ValueError("gates: no width has a non-zero gate")
        return out


class PackedRoutedLinear(nn.Module):
    """The packed counterpart of a :class:`RoutedQuantLinear`, for real-kernel inference.

    Holds the layer's codes at every width on a packed kernel (``models.packed.packed_linear``:
    2..4 bits on the int4 kernel, 5..8 on the int8 one) and runs each row on the kernel of the
    width its hard ``gates`` ``(B, T or 1, n_widths)`` pick (the argmax; soft training gates are
    not meant for it). Rows that pick the same width share one kernel call; a batch-1
    per-sequence decode is one call per layer. Without gates it runs at the layer's current
    width (the highest width when that is full precision).

    Weight-only, like every packed module: activation fake quantization is dropped.
    """

    def __init__(self, layer: RoutedQuantLinear, compute_dtype: torch.dtype | None = None):
        super().__init__()
        self.widths = list(layer.widths)
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.variants = nn.ModuleList(packed_linear(layer, b, compute_dtype) for b in self.widths)
        current = layer.weight_bits
        self.default_index = self.widths.index(current) if current in self.widths else -1
        self.gates: torch.Tensor | None = None
        self._decided: tuple[torch.Tensor, torch.Tensor, list[int]] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gates is None:
            return self.variants[self.default_index](x)
        if self._decided is not None and self._decided[0] is self.gates:
            # the same gates object as the last call: a per-sequence decision reused while
            # decoding; skips the argmax and the host sync of ``unique`` on every new token
            _, choice, used = self._decided
        else:
            choice = self.gates.argmax(-1)  # (B, T or 1) width index
            used = choice.unique().tolist()
            self._decided = (self.gates, choice, used)
        if len(used) == 1:
            return self.variants[used[0]](x)
        choice = choice.expand(x.shape[:-1]).reshape(-1)  # (N,)
        flat = x.reshape(-1, self.in_features)
        out = flat.new_empty(flat.shape[0], self.out_features)
        for index in used:
            rows = (choice == index).nonzero().squeeze(1)
            out[rows] = self.variants[index](flat[rows]).to(out.dtype)
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, widths={self.widths}"


def differentiable_choice(
    logits: torch.Tensor, config: RouterConfig, widths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates ``(..., n)`` and probabilities from router logits ``(..., n)``.

    ``straight_through``: one-hot of the argmax in the forward pass, the softmax's gradient in
    the backward pass (``hard - soft.detach() + soft``, CADyQ). ``neighbour_mix``: the two
    widths around the expected width, mixed linearly (DP-LLM), so the forward is soft too.
    Gumbel noise (optional) is added to the logits first.
    """
    if config.gumbel:
        uniform = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        logits = logits - torch.log(-torch.log(uniform))
    probs = (logits / config.temperature).softmax(-1)
    if config.choice == "straight_through":
        hard = F.one_hot(probs.argmax(-1), probs.shape[-1]).to(probs.dtype)
        return hard - probs.detach() + probs, probs
    expected = (probs * widths).sum(-1, keepdim=True)  # (..., 1) in bits
    upper = torch.searchsorted(widths, expected.detach().clamp(widths[0], widths[-1]))
    upper = upper.clamp(1, len(widths) - 1)
    lower = upper - 1
    low_bits, high_bits = widths[lower], widths[upper]
    high_share = (expected - low_bits) / (high_bits - low_bits)  # in [0, 1], differentiable
    gates = torch.zeros_like(probs)
    gates = gates.scatter(-1, lower, 1 - high_share).scatter_add(-1, upper, high_share)
    return gates, probs


class BitsTally:
    """Widths chosen over many routed forwards: per-layer counts of each width, weighted by
    valid tokens (per token) or sequences (per sequence)."""

    def __init__(self, layer_params: torch.Tensor, widths: Sequence[int]) -> None:
        self.widths = list(widths)
        self.share = (layer_params / layer_params.sum()).double()
        self.counts = torch.zeros(len(layer_params), len(self.widths), dtype=torch.float64)

    def add(self, records: list, attention_mask: torch.Tensor | None, widths: torch.Tensor) -> None:
        for index, record in enumerate(records):
            raw = record["raw"]  # (B, T or 1) chosen widths
            if raw.shape[1] > 1 and attention_mask is not None:
                weight = attention_mask.to(raw.dtype)
            else:
                weight = torch.ones_like(raw)
            for column, bits in enumerate(widths.tolist()):
                self.counts[index, column] += float(((raw == bits) * weight).sum())

    def layer_bits(self) -> list[float]:
        """Mean chosen width per layer."""
        totals = self.counts.sum(dim=1).clamp_min(1e-12)
        bits = torch.tensor(self.widths, dtype=torch.float64)
        return ((self.counts * bits).sum(dim=1) / totals).tolist()

    def mean_bits(self) -> float:
        """Parameter-weighted mean of the per-layer mean widths."""
        return float((torch.tensor(self.layer_bits(), dtype=torch.float64) * self.share).sum())

    def histogram(self) -> list[dict[str, float]]:
        """Per layer, the share of decisions at each width (``{"2": 0.1, "4": 0.9, ...}``)."""
        totals = self.counts.sum(dim=1, keepdim=True).clamp_min(1e-12)
        shares = self.counts / totals
        return [
            {str(b): round(float(s), 6) for b, s in zip(self.widths, row, strict=True)}
            for row in shares
        ]
