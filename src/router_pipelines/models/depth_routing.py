"""Token routing over depth (seed 003): the machinery Mixture-of-Depths and the Dynamic
Transformer share, and the config both are built from.

A routed block computes only the tokens it selects: gather → block → scatter. Selected tokens
keep their causal order (top-k, then sort), attend only to each other within their own
sequence and are rotated by their true positions; the others leave the block bit-identical.
A selected token becomes ``x + g · (block(x) − x)``, ``g`` the block's gate (MoD: σ(router
logit); DTF: the surprise gate), which puts the router on the gradient path.

Selection has two modes: ``topk`` (training, teacher-forced evaluation: the top ⌊γ·T⌋ tokens
of each sequence, which looks ahead) and ``causal`` (generation: each token decides alone,
from the stop-gradient predictor's logit, or the BCE-trained router logit, being > 0).

The blocks are in :mod:`.mod` and :mod:`.dtf`; the wrapped model and its files in
:mod:`.depth_routing_lm`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from router_pipelines.models.depth_routing_config import (  # noqa: F401 (re-exported)
    CAUSAL_ROUTERS,
    DEFAULT_GAMMA,
    MODEL_TYPES,
    ROUTING_MODES,
    DepthRoutingConfig,
    DTFConfig,
)


def capacity(gamma: float, length: int) -> int:
    """k = ⌊γ·T⌋ (a hair of tolerance so 0.5·6 is 3 despite float rounding)."""
    return min(length, int(math.floor(gamma * length + 1e-6)))


def topk_membership(scores: torch.Tensor, gamma: float) -> torch.Tensor:
    """(B, T) bool: the top ⌊γ·T⌋ scores of each sequence (``topk``: MPS-safe, no kthvalue)."""
    batch, length = scores.shape
    k = capacity(gamma, length)
    member = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        member.scatter_(1, scores.topk(k, dim=1).indices, True)
    return member


def selected_slots(
    select: torch.Tensor, count: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selected positions of each sequence in causal order, padded to the largest count.

    Args:
        select: (B, T) bool.
        count: the number of selected tokens of every sequence when the caller knows it (top-k
            selection: ⌊γ·T⌋); None: counted, which reads a number off the device (a sync,
            and a graph break under ``torch.compile``).

    Returns:
        ``idx`` (B, K) long: positions, ascending; a padding slot holds ``T`` (a dummy row).
        ``valid`` (B, K) bool: which slots are real.
    """
    batch, length = select.shape
    counts = select.sum(dim=1)
    k = count if count is not None else (int(counts.max()) if batch else 0)
    positions = torch.arange(length, device=select.device).expand(batch, length)
    order = torch.where(select, positions, positions + length).argsort(dim=1)[:, :k]
    valid = torch.arange(k, device=select.device)[None, :] < counts[:, None]
    return torch.where(valid, order, torch.full_like(order, length)), valid


def _gather(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """values (B, T, ...) at idx (B, K) along dim 1; a padding slot (idx = T) reads row T − 1."""
    safe = idx.clamp(max=values.shape[1] - 1)
    return values.gather(
        1,
        safe.view(*safe.shape, *([1] * (values.dim() - 2))).expand(*safe.shape, *values.shape[2:]),
    )


def scatter_back(x: torch.Tensor, idx: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
    """``x`` with ``routed`` (B, K, d) written at ``idx``; padding slots land in a dropped row,
    so unselected tokens are the very tensors that came in."""
    batch, length, width = x.shape
    padded = torch.cat([x, x.new_zeros(batch, 1, width)], dim=1)
    padded = padded.scatter(1, idx[..., None].expand(-1, -1, width), routed)
    return padded[:, :length]


@dataclass
class RoutingRecord:
    """What a routed block saw in its last forward, for the auxiliary losses and statistics
    (tensors keep their graph while training)."""

    router_logits: torch.Tensor  # (B, T) the score top-k ranks (MoD: router; DTF: gate logit)
    predictor_logits: torch.Tensor  # (B, T) stop-gradient predictor
    topk_target: torch.Tensor  # (B, T) bool: top-k membership (the predictor's label)
    selected: torch.Tensor  # (B, T) bool: what was really computed
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # DTF: s_ce, s_cu, prior, ...


class RoutedComputation(nn.Module):
    """Selection plus gather → block → scatter, shared by the MoD and DTF blocks.

    Args:
        block: a transformers decoder layer (``forward(hidden_states, attention_mask,
            position_ids, past_key_values, use_cache, position_embeddings, **kwargs)``).
        hidden_size: model width.
        config: the routing config (γ, predictor size, causal router).
    """

    def __init__(self, block: nn.Module, hidden_size: int, config: DepthRoutingConfig) -> None:
        super().__init__()
        self.block = block
        self.capacity_gamma = float(config.capacity_gamma)
        self.causal_router = config.causal_router
        self.predictor = nn.Sequential(
            nn.Linear(hidden_size, config.predictor_hidden_size),
            nn.SiLU(),
            nn.Linear(config.predictor_hidden_size, 1),
        )
        # Causal mode computes a token when its logit exceeds this threshold: 0 (probability
        # 1/2) until calibrate_causal_thresholds sets it to the (1 − γ) quantile of validation
        # logits, so generation computes about γ of the tokens even while the predictor is
        # still biased towards the majority class (not computed).
        self.register_buffer("causal_threshold", torch.zeros(()))
        self.mode = "topk"
        self.layer_idx = _layer_index(block)
        self.last: RoutingRecord | None = None
        # (B, S) bool, True at real tokens, of the forward now running when its 2-D attention
        # mask pads (set by DepthRoutingLM; None without padding). The last T columns are this
        # forward's tokens: with a KV cache the model's 4-D mask covers the dense cache, not a
        # routed block's own slots, so padded keys are hidden through this instead.
        self.padding: torch.Tensor | None = None

    def choose(
        self, scores: torch.Tensor, router_logits: torch.Tensor, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(selected, topk_target, predictor_logits), each (B, T)."""
        predictor_logits = self.predictor(x.detach()).squeeze(-1).float()  # stop-gradient
        target = topk_membership(scores.detach(), self.capacity_gamma)
        if self.mode == "topk":
            return target, target, predictor_logits
        decider = predictor_logits if self.causal_router == "predictor" else router_logits
        return decider.detach() > self.causal_threshold, target, predictor_logits

    def causal_logits(self, record: RoutingRecord) -> torch.Tensor:
        """The logits causal mode thresholds (predictor or router), from a forward's record."""
        return (
            record.predictor_logits if self.causal_router == "predictor" else record.router_logits
        )

    def route(
        self,
        x: torch.Tensor,
        selected: torch.Tensor,
        gate: torch.Tensor,
        attention_mask: torch.Tensor | None,
        position_ids: torch.Tensor | None,
        past_key_values: Any,
        use_cache: bool | None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        **kwargs: Any,
    ) -> torch.Tensor:
        """x (B, T, d) with the selected tokens replaced by x + gate · (block(x) − x)."""
        batch, length, _ = x.shape
        # top-k selects exactly ⌊γ·T⌋ tokens of every sequence: no count read off the device
        topk = self.mode == "topk"
        idx, valid = selected_slots(
            selected, capacity(self.capacity_gamma, length) if topk else None
        )
        if idx.shape[1] == 0:
            return x  # nothing selected: the cache of this block stays as it was
        if position_ids is None:
            position_ids = torch.arange(length, device=x.device)[None]
        positions = _gather(position_ids.expand(batch, length), idx)
        cos, sin = (e.expand(batch, *e.shape[1:]) for e in position_embeddings)
        decoding = bool(use_cache) and past_key_values is not None
        keys = valid
        real = self.real_tokens(length)
        if decoding and real is not None:
            keys = valid & _gather(real, idx)  # a padding token is never attended
        mask = self._mask(
            x, idx, keys, positions, attention_mask, past_key_values, decoding, complete=topk
        )
        x_sel = _gather(x, idx)  # (B, K, d)
        out = self.block(
            x_sel,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=past_key_values,
            use_cache=use_cache,
            position_embeddings=(_gather(cos, idx), _gather(sin, idx)),
            **kwargs,
        )
        g = _gather(gate, idx).to(x.dtype)[..., None]
        routed = torch.where(valid[..., None], x_sel + g * (out - x_sel), x_sel)
        return scatter_back(x, idx, routed)

    def real_tokens(self, length: int) -> torch.Tensor | None:
        """(B, length) bool, True at this forward's real (not padding) tokens, or ``None``."""
        if self.padding is None:
            return None
        return self.padding[:, -length:]

    def _mask(
        self,
        x: torch.Tensor,
        idx: torch.Tensor,
        valid: torch.Tensor,
        positions: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Any,
        decoding: bool,
        complete: bool = False,
    ) -> torch.Tensor | None:
        """The additive (B, 1, K, S) mask of the selected tokens: causal by true position,
        within their own sequence, keys of padding slots (and, decoding, padding tokens:
        ``valid`` is False there) hidden; ``None`` where SDPA's causal flag says the same (all
        slots real, no cache, no mask from the model). Every row keeps its own key, so no row
        is empty (SDPA would give NaN)."""
        k = idx.shape[1]
        eye = torch.eye(k, dtype=torch.bool, device=x.device)[None]
        if decoding:
            # Keys: this block's cached (selected) tokens, all earlier, then the new ones.
            state = _cache_state(cache)
            cached = state.get(self.layer_idx)
            new = (positions[:, None, :] <= positions[:, :, None]) & valid[:, None, :]
            if cached is None:
                allowed = new
                state[self.layer_idx] = valid
            else:
                allowed = torch.cat([cached[:, None, :].expand(-1, k, -1), new], dim=2)
                state[self.layer_idx] = torch.cat([cached, valid], dim=1)
            allowed[..., -k:] |= eye
        elif attention_mask is None:
            if complete or bool(valid.all()):  # complete: every slot is real (top-k)
                return None
            allowed = (positions[:, None, :] <= positions[:, :, None]) & valid[:, None, :]
            allowed |= eye
        else:
            full = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
            full = full[:, 0].expand(x.shape[0], -1, -1)  # (B, T, T)
            safe = idx.clamp(max=full.shape[1] - 1)
            allowed = full.gather(1, safe[..., None].expand(-1, -1, full.shape[2]))
            allowed = allowed.gather(2, safe[:, None, :].expand(-1, k, -1))
            allowed = (allowed & valid[:, None, :]) | eye
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        return torch.where(allowed, zero, torch.finfo(x.dtype).min)[:, None]


def _cache_state(cache: Any) -> dict[int, torch.Tensor]:
    """Per routed block, which of its cached key slots are real (kept on the cache object, so
    it lives and dies with one generation)."""
    state = getattr(cache, "depth_routing_slots", None)
    if state is None:
        state = {}
        cache.depth_routing_slots = state
    return state


def _layer_index(block: nn.Module) -> int:
    attention = getattr(block, "self_attn", None)
    index = getattr(attention, "layer_idx", None)
    if index is None:
        raise ValueError(
            f"model: {type(block).__name__} has no self_attn.layer_idx; token routing supports "
            "Llama / Qwen2-style decoder blocks"
        )
    return int(index)


class PassThrough(nn.Module):
    """Stands where a block was moved into a routed pair (DTF's Dynamic layer): identity."""

    def __init__(self, attention_type: str = "full_attention") -> None:
        super().__init__()
        self.attention_type = attention_type

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states
