"""The ``switchable`` parameter group, mirroring the seed's configuration classes.

``switchable.model`` + ``switchable.quantization`` (the seed's ModelConfig and
SwitchableQuantizationConfig: the library's :class:`SwitchableConfig`), ``switchable.training``
(the seed's TrainingConfig: the shared engine's :class:`TrainingConfig` extended with the
switching strategy and distillation), ``switchable.experiment`` (the seed's ExperimentConfig:
what is evaluated and registered) and ``switchable.base`` (where the base model comes from when
the pipeline runs on its own). Each dataclass extends or composes a library config rather than
copying its fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from router_pipelines.config import (
    RegisterConfig,
    check_choice,
    check_optional_int,
    config_from_dict,
    unknown_keys_message,
)
from router_pipelines.families.switchable import (
    BitEvalConfig,
    DistillConfig,
    SwitchingConfig,
    check_widths,
    lr_multiplier_fn,
)
from router_pipelines.model_source import ModelSourceConfig
from router_pipelines.models.switchable import SwitchableConfig
from router_pipelines.training.config import TrainingConfig


@dataclass
class SwitchableModelConfig:
    """``switchable.model``: the widths and which layers are quantized."""

    bit_widths: list[Any] = field(default_factory=lambda: [2, 4, 8])  # weight widths, 2..8
    n_layer: int | None = None  # keep the first n_layer blocks of the base (null: all)
    quantize_lm_head: bool = False  # also quantize the LM head
    quantize_embeddings: bool = False  # also quantize the embedding tables (per row)

    def __post_init__(self) -> None:
        check_optional_int("n_layer", self.n_layer, minimum=1)


@dataclass
class QuantizationConfig:
    """``switchable.quantization``: the quantizers (see SwitchableConfig for each field)."""

    act_bits: Any = 8  # int 2..8, "same" (follow the weight width) or null (FP activations)
    nested: bool = False  # Matryoshka: lower widths are the top bits of one int8 code
    per_channel: bool = True  # one weight step per output channel
    step_init: str = "mse"  # mse | lsq | max


@dataclass
class SwitchableTrainingConfig(TrainingConfig):
    """``switchable.training``: every engine field plus the switching and distillation ones.

    Stored whole in every checkpoint, so resuming with another strategy or loss weight is
    refused like any other change that alters the result.
    """

    output_dir: str = "data/06_models/checkpoints/switchable"
    # Under DDP a single-width step leaves the other widths' quantizer steps without gradients.
    ddp_find_unused_parameters: bool = True
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
class ExperimentConfig:
    """``switchable.experiment``: which bit configurations are evaluated, and registration."""

    evaluation: BitEvalConfig = field(default_factory=BitEvalConfig)
    register: RegisterConfig = field(default_factory=lambda: RegisterConfig(name="switchable_lm"))


@dataclass
class SwitchableParams:
    base: ModelSourceConfig = field(
        default_factory=lambda: ModelSourceConfig(source="auto", registry_name="base_lm")
    )
    model: SwitchableModelConfig = field(default_factory=SwitchableModelConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    training: SwitchableTrainingConfig = field(default_factory=SwitchableTrainingConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)

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
        training = self.training
        return SwitchingConfig(
            strategy=training.switch_strategy,
            bit_widths=list(self.model.bit_widths),
            switch_interval=training.switch_interval,
            # the schedule is only read (and checked against bit_widths) when it is used
            bit_width_schedule=(
                training.bit_width_schedule if training.switch_strategy == "scheduled" else None
            ),
            seed=training.seed,
            max_steps=training.max_steps,
        )

    @property
    def distill(self) -> DistillConfig:
        training = self.training
        return DistillConfig(
            ce_weight=training.ce_weight,
            kd_weight=training.kd_weight,
            temperature=training.temperature,
            inter_width_kd_weight=training.inter_width_kd_weight,
        )

    @property
    def eval_bits(self) -> Any:
        widths = sorted(self.model.bit_widths)
        return {"lowest": widths[0], "highest": widths[-1]}.get(
            self.training.eval_bits, self.training.eval_bits
        )


GROUPS = ("base", "model", "quantization", "training", "experiment")


def parse_switchable_params(params: dict[str, Any] | None) -> SwitchableParams:
    """Validate the ``switchable`` group before any work; errors name the bad key.

    A missing sub-group takes its defaults, so a node can pass only the sub-groups it reads.

    Raises:
        ValueError: an unknown key, an unsupported width (1, 9, "four"), an unknown strategy, an
            empty schedule, ... naming ``switchable.<group>.<key>`` and what is allowed.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(GROUPS))
    if unknown:
        raise ValueError(unknown_keys_message("switchable", unknown, GROUPS))
    parsed = config_from_dict(SwitchableParams, params, "switchable")
    # Building the library configs validates widths, strategy, schedule and eval choice now.
    _named("switchable.model", lambda: parsed.switchable)
    _named("switchable.training", lambda: parsed.switching)
    _named("switchable.training", lambda: parsed.distill)
    _named(
        "switchable.experiment.evaluation",
        lambda: check_widths(parsed.experiment.evaluation, parsed.model.bit_widths),
    )
    allowed_eval = ["lowest", "highest", "fp", *parsed.model.bit_widths]
    check_choice("switchable.training.eval_bits", parsed.training.eval_bits, allowed_eval)
    _named(
        "switchable.training",
        lambda: lr_multiplier_fn(parsed.switching, parsed.training.lr_multipliers),
    )
    if parsed.training.switch_strategy == "joint" and parsed.training.lr_multipliers:
        raise ValueError(
            f"switchable.training.lr_multipliers: {parsed.training.lr_multipliers} has no "
            "effect under switch_strategy joint, where every width shares each optimizer step; "
            "set it to {} or use a strategy that trains one width per step (cyclic, random, "
            "scheduled, progressive)"
        )
    return parsed


def _named(where: str, build: Any) -> Any:
    try:
        return build()
    except ValueError as err:
        raise ValueError(f"{where}.{err}") from err
