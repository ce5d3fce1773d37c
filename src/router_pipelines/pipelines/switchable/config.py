"""The ``switchable`` parameter group, mirroring the seed's configuration classes.

``switchable.model`` (ModelConfig), ``switchable.quantization`` (SwitchableQuantizationConfig),
``switchable.training`` (TrainingConfig: the switching strategy and distillation, plus every
field of the shared engine) and ``switchable.experiment`` (ExperimentConfig: what is evaluated
and registered). ``switchable.base`` says where the full-precision base model comes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from router_pipelines.config import check_choice, config_from_dict
from router_pipelines.evaluation.configs import EvalConfig, check_widths
from router_pipelines.families.switchable import DistillConfig, SwitchingConfig, lr_multiplier_fn
from router_pipelines.models.switchable import SwitchableConfig
from router_pipelines.training import TrainingConfig

BASE_SOURCES = ("auto", "catalog", "registry", "pretrained", "train")


@dataclass
class BaseSourceConfig:
    """Where the full-precision base model (and teacher) comes from.

    ``auto``: the newest saved ``base_model`` if it matches the current tokenizer and
    ``pretrain.model``, else (in a single process) the registered ``registry_name`` /
    ``registry_version`` if it matches, else train one with the ``pretrain`` parameters. ``catalog``: the newest
    saved one, or an error. ``registry``: MLflow ``models:/<registry_name>/<registry_version>``.
    ``pretrained``: ``pretrain.model.name_or_path`` loaded untrained. ``train``: always train.
    """

    source: str = "auto"
    registry_name: str = "base_lm"
    registry_version: str = "latest"  # a version number, "latest" or "@alias"

    def __post_init__(self) -> None:
        check_choice("source", self.source, BASE_SOURCES)


@dataclass
class SwitchableModelConfig:
    bit_widths: list[Any] = field(default_factory=lambda: [2, 4, 8])  # weight widths, 2..8
    n_layer: int | None = None  # keep the first n_layer blocks of the base (null: all)
    quantize_lm_head: bool = False  # also quantize the LM head
    quantize_embeddings: bool = False  # also quantize the embedding tables (per row)

    def __post_init__(self) -> None:
        if self.n_layer is not None and (
            isinstance(self.n_layer, bool) or not isinstance(self.n_layer, int) or self.n_layer < 1
        ):
            raise ValueError(f"n_layer: expected null or an integer >= 1, got {self.n_layer!r}")


@dataclass
class QuantizationConfig:
    act_bits: Any = 8  # int 2..8, "same" (follow the weight width) or null (FP activations)
    nested: bool = False  # Matryoshka: lower widths are the top bits of one int8 code
    per_channel: bool = True  # one weight step per output channel
    step_init: str = "mse"  # mse | lsq | max


@dataclass
class SwitchableTrainingConfig:
    """Family fields; every other key of ``switchable.training`` goes to the engine."""

    switch_strategy: str = "joint"  # cyclic | random | scheduled | progressive | joint
    switch_interval: int = 10
    bit_width_schedule: list[Any] | None = None
    lr_multipliers: dict[Any, float] = field(default_factory=dict)  # {2: 1.5, 8: 1.0}
    ce_weight: float = 1.0
    kd_weight: float = 1.0
    temperature: float = 1.0
    inter_width_kd_weight: float = 1.0
    eval_bits: Any = "lowest"  # width of the engine's eval loss: lowest | highest | 2..8 | fp


@dataclass
class RegisterConfig:
    enabled: bool = True
    name: str = "switchable_lm"


@dataclass
class ExperimentConfig:
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)


@dataclass
class SwitchableParams:
    base: BaseSourceConfig
    model: SwitchableModelConfig
    quantization: QuantizationConfig
    family: SwitchableTrainingConfig
    engine: TrainingConfig
    experiment: ExperimentConfig

    @property
    def switchable(self) -> SwitchableConfig:
        return SwitchableConfig(
            bit_widths=list(self.model.bit_widths),
            act_bits=self.quantization.act_bits,
            nested=self.quantization.nested,
            per_channel=self.quantization.per_channel,
            step_init=self.quantization.step_init,
            quantize_lm_head=self.model.quantize_lm_head,
            quantize_embeddings=self.model.quantize_embeddings,
        )

    @property
    def switching(self) -> SwitchingConfig:
        return SwitchingConfig(
            strategy=self.family.switch_strategy,
            bit_widths=list(self.model.bit_widths),
            switch_interval=self.family.switch_interval,
            # the schedule is only read (and checked against bit_widths) when it is used
            bit_width_schedule=(
                self.family.bit_width_schedule
                if self.family.switch_strategy == "scheduled"
                else None
            ),
            seed=self.engine.seed,
            max_steps=self.engine.max_steps,
        )

    @property
    def distill(self) -> DistillConfig:
        return DistillConfig(
            ce_weight=self.family.ce_weight,
            kd_weight=self.family.kd_weight,
            temperature=self.family.temperature,
            inter_width_kd_weight=self.family.inter_width_kd_weight,
        )

    @property
    def eval_bits(self) -> Any:
        widths = sorted(self.model.bit_widths)
        return {"lowest": widths[0], "highest": widths[-1]}.get(
            self.family.eval_bits, self.family.eval_bits
        )


def parse_switchable_params(params: dict[str, Any]) -> SwitchableParams:
    """Validate the whole ``switchable`` group before any work; errors name the bad key.

    Raises:
        ValueError: an unknown key, an unsupported width (1, 9, "four"), an unknown strategy, an
            empty schedule, ... naming ``switchable.<group>.<key>`` and what is allowed.
    """
    params = dict(params or {})
    groups = ("base", "model", "quantization", "training", "experiment")
    unknown = sorted(set(params) - set(groups))
    if unknown:
        raise ValueError(f"switchable: unknown group(s) {unknown}; allowed are {list(groups)}")
    training = dict(params.get("training") or {})
    family_keys = {f.name for f in fields(SwitchableTrainingConfig)}
    family_part = {k: v for k, v in training.items() if k in family_keys}
    engine_part = {k: v for k, v in training.items() if k not in family_keys}
    engine_part.setdefault("output_dir", "data/06_models/checkpoints/switchable")
    # Under DDP a single-width step leaves the other widths' quantizer steps without gradients.
    engine_part.setdefault("ddp_find_unused_parameters", True)
    parsed = SwitchableParams(
        base=config_from_dict(BaseSourceConfig, params.get("base"), "switchable.base"),
        model=config_from_dict(SwitchableModelConfig, params.get("model"), "switchable.model"),
        quantization=config_from_dict(
            QuantizationConfig, params.get("quantization"), "switchable.quantization"
        ),
        family=config_from_dict(SwitchableTrainingConfig, family_part, "switchable.training"),
        engine=config_from_dict(TrainingConfig, engine_part, "switchable.training"),
        experiment=config_from_dict(
            ExperimentConfig, params.get("experiment"), "switchable.experiment"
        ),
    )
    # Building the library configs validates widths, strategy, schedule and eval choice now.
    _named("switchable.model", lambda: parsed.switchable)
    _named("switchable.training", lambda: parsed.switching)
    _named("switchable.training", lambda: parsed.distill)
    _named(
        "switchable.experiment.evaluation",
        lambda: check_widths(parsed.experiment.evaluation, parsed.model.bit_widths),
    )
    allowed_eval = ["lowest", "highest", "fp", *parsed.model.bit_widths]
    check_choice("switchable.training.eval_bits", parsed.family.eval_bits, allowed_eval)
    _named(
        "switchable.training",
        lambda: lr_multiplier_fn(parsed.switching, parsed.family.lr_multipliers),
    )
    if parsed.family.switch_strategy == "joint" and parsed.family.lr_multipliers:
        raise ValueError(
            f"switchable.training.lr_multipliers: {parsed.family.lr_multipliers} has no effect "
            "under switch_strategy joint, where every width shares each optimizer step; set it "
            "to {} or use a strategy that trains one width per step (cyclic, random, scheduled, "
            "progressive)"
        )
    return parsed


def _named(where: str, build: Any) -> Any:
    try:
        return build()
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from err
