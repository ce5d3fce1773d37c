"""The Dynamic Transformer (arXiv 2511.21408): surprise decides which tokens a block computes.

Blocks pair up. The Decision layer computes every token: original H, posterior
H + Block(H) (the block's output), prior sg(H) + PriorFFN(RMSNorm(sg(H))), trained by
MSE(prior, stopgrad(posterior)), so the prior loss trains the PriorFFN alone. The Dynamic
layer that follows routes on surprise::

    D_st = ‖posterior − original‖² / d          static surprise
    D_ch = ‖posterior − prior‖² / d             change surprise
    CE   = D_st − (D_ch − log o_ce)             expected criterion
    CU   = D_st − m_cu · MA(sg(D_st))           unexpected criterion (causal moving average)
    gate = S_CE + S_CU − S_CE·S_CU,  S_x = σ(softplus(β_x) · x)

and computes the top ⌊γ·T⌋ gates, x + gate·(block(x) − x), through the same
:class:`~router_pipelines.models.depth_routing.RoutedComputation` as MoD. The pair sits at the
Decision layer's index; a :class:`PassThrough` keeps the Dynamic layer's place.

As in the paper (§3.1, eqs. 3.6–3.12) the inverse temperatures pass through a softplus, so
they stay positive (a token whose surprise is above its threshold scores higher) while the raw
parameters start at the seed's ``beta_ce_init`` −0.3 / ``beta_cu_init`` −0.6 (softplus 0.55 /
0.44). The PriorFFN is the paper's bias-free SwiGLU of width max(2, ⌈d·f⌉ rounded up to even)
for hidden size d and factor f, weights N(0, 0.02²).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from router_pipelines.models.depth_routing import (
    DepthRoutingConfig,
    RoutedComputation,
    RoutingRecord,
    _cache_state,
)


def causal_moving_average(
    values: torch.Tensor, window: int, history: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of each position's last ``window`` values, itself included (B, T); NaN values
    (padding tokens) are left out of every mean (an all-NaN window gives 0).

    ``history`` (B, H) are the values before ``values`` (KV-cache decoding).
    """
    full = values if history is None else torch.cat([history, values], dim=1)
    present = ~torch.isnan(full)
    # The fast path needs a number off the device (a graph break under torch.compile); the
    # general path below gives the same values when nothing is missing.
    if not torch.compiler.is_compiling() and bool(present.all()):
        sums = torch.nn.functional.pad(full.cumsum(dim=1), (1, 0))  # (B, H + T + 1)
        ends = torch.arange(1, full.shape[1] + 1, device=full.device)
        starts = (ends - window).clamp(min=0)
        means = (sums[:, ends] - sums[:, starts]) / (ends - starts).to(full.dtype)
        return means[:, full.shape[1] - values.shape[1] :]
    sums = torch.nn.functional.pad(full.nan_to_num(0.0).cumsum(dim=1), (1, 0))
    counts = torch.nn.functional.pad(present.to(full.dtype).cumsum(dim=1), (1, 0))
    ends = torch.arange(1, full.shape[1] + 1, device=full.device)
    starts = (ends - window).clamp(min=0)
    count = (counts[:, ends] - counts[:, starts]).clamp(min=1)
    means = (sums[:, ends] - sums[:, starts]) / count
    return means[:, full.shape[1] - values.shape[1] :]


# Part of a DTF model's reuse identity (pipelines/depth_routing): raise it when the layers change
# so that a model saved by older code (whose weights no longer fit, or were trained by other
# maths) is trained again. 2: the paper's softplus temperatures and SwiGLU PriorFFN, and a prior
# loss that stops at the trunk (2026-12-03).
DTF_REVISION = 2


def prior_ffn_width(hidden_size: int, factor: float) -> int:
    """The PriorFFN's intermediate width: max(2, ⌈d·f⌉ rounded up to an even number)."""
    width = math.ceil(hidden_size * factor)
    return max(2, width + width % 2)


class PriorFFN(nn.Module):
    """A small bias-free SwiGLU, (SiLU(x W1) ⊙ x W3) W2, predicting the Decision block's update."""

    def __init__(self, hidden_size: int, width: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, width, bias=False)
        self.up_proj = nn.Linear(hidden_size, width, bias=False)
        self.down_proj = nn.Linear(width, hidden_size, bias=False)
        for linear in (self.gate_proj, self.up_proj, self.down_proj):
            nn.init.normal_(linear.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class SurpriseGate(nn.Module):
    """The Dynamic layer's gate from the Decision layer's three states (learnable β, o, m)."""

    def __init__(self, config: DepthRoutingConfig) -> None:
        super().__init__()
        dtf = config.dtf
        self.beta_ce = nn.Parameter(torch.tensor(float(dtf.beta_ce_init)))
        self.beta_cu = nn.Parameter(torch.tensor(float(dtf.beta_cu_init)))
        self.cu_multiplier = nn.Parameter(torch.tensor(float(dtf.cu_detection_multiplier_init)))
        self.log_ce_offset = nn.Parameter(torch.tensor(math.log(dtf.ce_criterion_offset_init)))
        self.ma_window = dtf.ma_window

    def inverse_temperatures(self) -> tuple[torch.Tensor, torch.Tensor]:
        """softplus(β_ce), softplus(β_cu): the sigmoids' (positive) inverse temperatures."""
        return nn.functional.softplus(self.beta_ce), nn.functional.softplus(self.beta_cu)

    def forward(
        self,
        original: torch.Tensor,
        posterior: torch.Tensor,
        prior: torch.Tensor,
        history: torch.Tensor | None = None,
        real: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """gate, s_ce, s_cu, d_st, d_ch, ce, cu: each (B, T), in fp32 at least; ``d_st_ma``:
        D_st as the moving average sees it (NaN at padding tokens, ``real`` False there)."""
        dtype = torch.promote_types(original.dtype, torch.float32)
        original, posterior, prior = (t.to(dtype) for t in (original, posterior, prior))
        d_st = (posterior - original).pow(2).mean(dim=-1)
        d_ch = (posterior - prior).pow(2).mean(dim=-1)
        ce = d_st - (d_ch - self.log_ce_offset.to(dtype))
        # The moving average is a threshold, not a path for gradients (the reference detaches it).
        seen = d_st.detach() if real is None else d_st.detach().masked_fill(~real, float("nan"))
        cu = d_st - self.cu_multiplier.to(dtype) * causal_moving_average(
            seen, self.ma_window, history
        )
        beta_ce, beta_cu = self.inverse_temperatures()
        s_ce = torch.sigmoid(beta_ce.to(dtype) * ce)
        s_cu = torch.sigmoid(beta_cu.to(dtype) * cu)
        gate = s_ce + s_cu - s_ce * s_cu
        return {
            "gate": gate,
            "s_ce": s_ce,
            "s_cu": s_cu,
            "d_st": d_st,
            "d_ch": d_ch,
            "ce": ce,
            "cu": cu,
            "d_st_ma": seen,
        }


class DTFPair(nn.Module):
    """A Decision layer and the Dynamic layer after it, as one module (same call signature)."""

    def __init__(
        self,
        decision: nn.Module,
        dynamic: nn.Module,
        hidden_size: int,
        config: DepthRoutingConfig,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.decision = decision
        self.routing = RoutedComputation(dynamic, hidden_size, config)
        width = prior_ffn_width(hidden_size, config.dtf.prior_ffn_intermediate_size_factor)
        self.prior_norm = nn.RMSNorm(hidden_size, eps=eps)
        self.prior_ffn = PriorFFN(hidden_size, width)
        self.gate = SurpriseGate(config)
        self.attention_type = getattr(decision, "attention_type", "full_attention")

    @property
    def last(self) -> RoutingRecord | None:
        return self.routing.last

    def forward(
        self,
        hidden_states: torch.Tensor,  # (B, T, d)
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        original = hidden_states
        posterior = self.decision(
            original,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=position_embeddings,
            **kwargs,
        )
        # The prior predicts the Decision block's output from H without shaping H: with H on
        # the gradient path, MSE(prior, stopgrad(posterior)) pulls H after a target that moves
        # with it, and the hidden states run away (prior MSE 1e7 by step 140 of a from-scratch
        # `small` run). The paper stops the target's gradient "to avoid leaking gradients into
        # the main block" (§3.1.1); stopping H's as well keeps that promise for the blocks below.
        trunk = original.detach()
        prior = trunk + self.prior_ffn(self.prior_norm(trunk))
        decoding = bool(use_cache) and past_key_values is not None
        history = self._history(past_key_values) if decoding else None
        real = self.routing.real_tokens(hidden_states.shape[1])
        gates = self.gate(original, posterior, prior, history, real)
        if decoding:
            self._remember(past_key_values, history, gates["d_st_ma"].detach())
        selected, target, predictor_logits = self.routing.choose(
            gates["gate"], gates["gate"], posterior
        )
        self.routing.last = RoutingRecord(
            gates["gate"],
            predictor_logits,
            target,
            selected,
            {"s_ce": gates["s_ce"], "s_cu": gates["s_cu"], "prior": prior, "posterior": posterior},
        )
        return self.routing.route(
            posterior,
            selected,
            gates["gate"],
            attention_mask,
            position_ids,
            past_key_values,
            use_cache,
            position_embeddings,
            **kwargs,
        )

    def _history(self, cache: Any) -> torch.Tensor | None:
        return _cache_state(cache).get(("d_st", self.routing.layer_idx))

    def _remember(self, cache: Any, history: torch.Tensor | None, d_st: torch.Tensor) -> None:
        full = d_st if history is None else torch.cat([history, d_st], dim=1)
        _cache_state(cache)[("d_st", self.routing.layer_idx)] = full[
            :, -(self.gate.ma_window - 1) or None :
        ]
