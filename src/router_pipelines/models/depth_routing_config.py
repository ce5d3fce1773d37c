"""Depth-routing settings: the MoD/DTF configuration, importable without torch.

The Kedro parameter parser reads these at start-up (`kedro registry list`, the pre-run checks),
so they live apart from the routing machinery in :mod:`router_pipelines.models.depth_routing`,
which re-exports them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from router_pipelines.config import check_choice, check_int, check_positive

MODEL_TYPES = ("mod", "dtf")
ROUTING_MODES = ("topk", "causal")
CAUSAL_ROUTERS = ("predictor", "router")
DEFAULT_GAMMA = {"mod": 0.125, "dtf": 0.5}


@dataclass
class DTFConfig:
    """The Dynamic Transformer's surprise gate (names follow the seed)."""

    beta_ce_init: float = -0.3  # raw β_ce: S_CE = σ(softplus(β_ce) · CE)
    beta_cu_init: float = -0.6  # raw β_cu: S_CU = σ(softplus(β_cu) · CU)
    cu_detection_multiplier_init: float = 1.1  # m_cu: CU = D_st − m_cu · MA(D_st)
    ce_criterion_offset_init: float = 1.025  # o_ce: CE = D_st − (D_ch − log o_ce)
    prior_ffn_intermediate_size_factor: float = 0.0625  # PriorFFN width / hidden size
    ma_window: int = 100  # causal moving average of D_st over this many tokens

    def __post_init__(self) -> None:
        check_positive("cu_detection_multiplier_init", self.cu_detection_multiplier_init)
        check_positive("ce_criterion_offset_init", self.ce_criterion_offset_init)
        check_positive(
            "prior_ffn_intermediate_size_factor", self.prior_ffn_intermediate_size_factor
        )
        check_int("ma_window", self.ma_window, minimum=1)


@dataclass
class DepthRoutingConfig:
    """Which blocks route, how many tokens they take, and how generation decides causally."""

    model_type: str = "mod"  # mod | dtf
    capacity_gamma: float | None = (
        None  # share of tokens a routed block computes; null: 0.125 (mod), 0.5 (dtf)
    )
    # MoD: indices of routed blocks (null: every other block, 1, 3, 5, ...). DTF: ignored, the
    # blocks pair up as (decision 0, dynamic 1), (2, 3), ...
    routed_layers: list[int] | None = None
    predictor_hidden_size: int = 64  # the stop-gradient causal predictor MLP
    causal_router: str = "predictor"  # predictor | router: what decides in causal mode
    dtf: DTFConfig = field(default_factory=DTFConfig)

    def __post_init__(self) -> None:
        check_choice("model_type", self.model_type, MODEL_TYPES)
        check_choice("causal_router", self.causal_router, CAUSAL_ROUTERS)
        check_int("predictor_hidden_size", self.predictor_hidden_size, minimum=1)
        if self.model_type == "dtf" and self.causal_router == "router":
            raise ValueError(
                "causal_router: 'router' is MoD's BCE-trained router logit; DTF's gate is no "
                "logit, so DTF generates with causal_router: predictor"
            )
        if self.capacity_gamma is None:
            self.capacity_gamma = DEFAULT_GAMMA[self.model_type]
        gamma = self.capacity_gamma
        if isinstance(gamma, bool) or not isinstance(gamma, int | float) or not 0 < gamma <= 1:
            raise ValueError(f"capacity_gamma: {gamma!r} is outside (0, 1]; choose 0 < γ ≤ 1")
        self.capacity_gamma = float(gamma)
        if self.routed_layers is not None:
            for index in self.routed_layers:
                check_int("routed_layers[]", index, minimum=0)

    def layers_to_route(self, num_layers: int) -> list[int]:
        """MoD: the routed block indices for a model of ``num_layers`` blocks.

        Raises:
            ValueError: an index out of range, or a repeated one.
        """
        if self.routed_layers is None:
            return list(range(1, num_layers, 2))
        bad = [i for i in self.routed_layers if i >= num_layers]
        if bad:
            raise ValueError(
                f"routed_layers: {bad} out of range; the model has {num_layers} blocks "
                f"(indices 0..{num_layers - 1})"
            )
        if len(set(self.routed_layers)) != len(self.routed_layers):
            raise ValueError(f"routed_layers: {self.routed_layers} repeats an index")
        return sorted(self.routed_layers)

    def dtf_pairs(self, num_layers: int) -> list[tuple[int, int]]:
        """DTF: (decision, dynamic) block pairs.

        Raises:
            ValueError: an odd number of blocks, which cannot pair.
        """
        if num_layers % 2:
            raise ValueError(
                f"num_hidden_layers: {num_layers} blocks cannot pair into alternating Decision "
                "and Dynamic layers; DTF needs an even number of blocks"
            )
        return [(i, i + 1) for i in range(0, num_layers, 2)]
