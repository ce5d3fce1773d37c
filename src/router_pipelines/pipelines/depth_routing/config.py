"""The ``depth_routing`` parameter group (seed 003): MoD or DTF, from scratch or by transfer.

``depth_routing.model`` is the base model's :class:`ModelConfig` (a preset built from scratch,
or ``name_or_path`` for transfer) plus the routing fields of :class:`DepthRoutingConfig`
(``model.capacity_gamma`` as in the seed); ``training`` is the shared engine's config;
``loss`` the auxiliary weights; ``dense_baseline`` the same engine on the same data and steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router_pipelines.config import (
    RegisterConfig,
    check_bool,
    check_choice,
    check_int,
    check_positive,
    config_from_dict,
)
from router_pipelines.model_source import ModelSourceConfig, check_trained_source
from router_pipelines.models.depth_routing_config import MODEL_TYPES, DepthRoutingConfig, DTFConfig
from router_pipelines.models.presets import ModelConfig
from router_pipelines.training.config import TrainingConfig

MODES = ("scratch", "transfer")
REGISTERED_NAMES = {"mod": "mod_lm", "dtf": "dtf_lm"}
# What register_depth_routing reports (version tags; promotion.rules.depth_routing reads them).
HEADLINE_METRICS = (
    "validation_loss",
    "validation_bits_per_byte",
    "causal_validation_loss",
    "predictor_accuracy",
    "flops_per_token",  # analytic forward FLOPs per token, LM head included (top-k routing)
    "routed_share",  # share of tokens the routed blocks compute when generating (causal)
)


@dataclass
class DepthRoutingModelConfig(ModelConfig):
    """``depth_routing.model``: the base model, then which blocks route and how."""

    preset: str = "small"  # debug | tiny | small (scratch mode)
    architecture: str = "qwen2"  # llama | qwen2 (routing needs rotary Llama/Qwen2 blocks)
    capacity_gamma: float | None = None  # null: 0.125 for mod, 0.5 for dtf
    routed_layers: list[int] | None = None  # MoD: null = every other block (1, 3, 5, ...)
    predictor_hidden_size: int = 64
    causal_router: str = "predictor"  # predictor | router (MoD only): decides at generation
    dtf: DTFConfig = field(default_factory=DTFConfig)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.routing("mod")  # γ, layer indices, predictor and router choice

    def routing(self, model_type: str) -> DepthRoutingConfig:
        """The library's routing config for ``model_type``."""
        return DepthRoutingConfig(
            model_type=model_type,
            capacity_gamma=self.capacity_gamma,
            routed_layers=None if self.routed_layers is None else list(self.routed_layers),
            predictor_hidden_size=self.predictor_hidden_size,
            causal_router=self.causal_router,
            dtf=self.dtf,
        )


@dataclass
class RoutingLossConfig:
    """``depth_routing.loss``: weights of the auxiliary terms added to the LM cross-entropy."""

    router_aux_weight: float = 0.01  # MoD: BCE teaching router logits top-k membership
    predictor_weight: float = 1.0  # BCE of the stop-gradient predictor (trains only it)
    prior_loss_weight: float = 0.05  # DTF: MSE(prior, stopgrad(posterior))

    def __post_init__(self) -> None:
        for name in ("router_aux_weight", "predictor_weight", "prior_loss_weight"):
            check_positive(name, getattr(self, name), allow_zero=True)


@dataclass
class DenseBaselineConfig:
    """``depth_routing.dense_baseline``: the dense model trained by the same engine on the
    same data and steps, for side-by-side reports."""

    enabled: bool = True

    def __post_init__(self) -> None:
        check_bool("enabled", self.enabled)


@dataclass
class RoutingEvalConfig:
    """``depth_routing.evaluation``: validation metrics and speed."""

    batch_size: int = 8
    max_batches: int | None = 20
    speed: bool = True  # measure train-step time and generation tokens/s, dense vs routed
    speed_batch_size: int = 4
    speed_iters: int = 3
    decode_tokens: int = 32

    def __post_init__(self) -> None:
        check_int("batch_size", self.batch_size, minimum=1)
        check_bool("speed", self.speed)
        check_int("speed_batch_size", self.speed_batch_size, minimum=1)
        check_int("speed_iters", self.speed_iters, minimum=1)
        check_int("decode_tokens", self.decode_tokens, minimum=1)


@dataclass
class RoutingRegisterConfig:
    """``depth_routing.register``: one registered name per model type."""

    enabled: bool = True
    names: dict[str, str] = field(default_factory=lambda: dict(REGISTERED_NAMES))
    description: str | None = None

    def __post_init__(self) -> None:
        check_bool("enabled", self.enabled)
        missing = [t for t in MODEL_TYPES if not isinstance(self.names.get(t), str)]
        if missing or set(self.names) - set(MODEL_TYPES):
            raise ValueError(
                f"names: {self.names!r} must name exactly the model types {list(MODEL_TYPES)}"
            )

    def for_type(self, model_type: str) -> RegisterConfig:
        return RegisterConfig(self.enabled, self.names[model_type], self.description)


@dataclass
class DepthRoutingParams:
    model_type: str = "mod"  # mod | dtf (the mod / dtf pipelines fix it)
    mode: str = "scratch"  # scratch (model.preset) | transfer (model.name_or_path)
    model: DepthRoutingModelConfig = field(default_factory=DepthRoutingModelConfig)
    loss: RoutingLossConfig = field(default_factory=RoutingLossConfig)
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(
            output_dir="data/06_models/checkpoints/depth_routing"
        )
    )
    dense_baseline: DenseBaselineConfig = field(default_factory=DenseBaselineConfig)
    evaluation: RoutingEvalConfig = field(default_factory=RoutingEvalConfig)
    register: RoutingRegisterConfig = field(default_factory=RoutingRegisterConfig)
    # Where the routed model comes from (model_source.py): auto reuses a saved or registered
    # model with the same identity (model, routing, loss, training, data, tokenizer), else trains.
    source: ModelSourceConfig = field(default_factory=lambda: ModelSourceConfig(source="auto"))

    def __post_init__(self) -> None:
        check_choice("model_type", self.model_type, MODEL_TYPES)
        check_choice("mode", self.mode, MODES)
        check_trained_source(self.source, "routed models")
        if self.mode == "transfer" and not self.model.name_or_path:
            raise ValueError(
                "mode: 'transfer' needs model.name_or_path (a Qwen2 / Llama causal LM by hub id "
                "or local folder, e.g. Qwen/Qwen2.5-0.5B)"
            )
        if self.mode == "scratch" and self.model.name_or_path:
            raise ValueError(
                f"mode: 'scratch' builds model.preset, but model.name_or_path is "
                f"{self.model.name_or_path!r}; set mode: transfer or name_or_path: null"
            )
        try:
            self.model.routing(self.model_type)
        except ValueError as err:
            raise ValueError(f"model.{err}") from None

    def fixed(self, model_type: str | None) -> DepthRoutingParams:
        """These params with the model type a pipeline fixes (``mod`` / ``dtf``)."""
        if model_type is None or model_type == self.model_type:
            return self
        return config_from_dict(
            DepthRoutingParams, {**_as_dict(self), "model_type": model_type}, "depth_routing"
        )


def parse_depth_routing_params(group: dict[str, Any] | None) -> DepthRoutingParams:
    """The whole ``depth_routing`` group as typed configs; errors name
    ``depth_routing.<group>.<key>``."""
    return config_from_dict(DepthRoutingParams, group, "depth_routing")


def _as_dict(params: DepthRoutingParams) -> dict[str, Any]:
    from dataclasses import asdict

    values = asdict(params)
    values["model"]["capacity_gamma"] = params.model.capacity_gamma
    return values
