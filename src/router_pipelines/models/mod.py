"""Mixture-of-Depths (Raposo et al., 2024): a scalar router picks the tokens a block computes.

r = wᵀx per token; the top ⌊γ·T⌋ tokens of each sequence go through the block and become
x + σ(r)·(block(x) − x); the others pass by the residual, untouched. The routing itself is
:class:`~router_pipelines.models.depth_routing.RoutedComputation`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from router_pipelines.models.depth_routing import (
    DepthRoutingConfig,
    RoutedComputation,
    RoutingRecord,
)


class MoDBlock(nn.Module):
    """A decoder block behind a Mixture-of-Depths router (same call signature as the block)."""

    def __init__(self, block: nn.Module, hidden_size: int, config: DepthRoutingConfig) -> None:
        super().__init__()
        self.routing = RoutedComputation(block, hidden_size, config)
        self.router = nn.Linear(hidden_size, 1, bias=False)
        nn.init.normal_(self.router.weight, std=0.02)
        self.attention_type = getattr(block, "attention_type", "full_attention")
        # The multiplier on the block's update; a test fixes it to 1 to compare with dense.
        self.gate_activation: Callable[[torch.Tensor], torch.Tensor] = torch.sigmoid

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
        router_logits = self.router(hidden_states).squeeze(-1).float()  # (B, T), fp32
        selected, target, predictor_logits = self.routing.choose(
            router_logits, router_logits, hidden_states
        )
        self.routing.last = RoutingRecord(router_logits, predictor_logits, target, selected)
        return self.routing.route(
            hidden_states,
            selected,
            self.gate_activation(router_logits),
            attention_mask,
            position_ids,
            past_key_values,
            use_cache,
            position_embeddings,
            **kwargs,
        )
