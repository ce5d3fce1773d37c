"""The ``precision_router`` parameter group, mirroring the seed's command line.

``precision_router.training`` carries the seed's options (``dataset``, ``seq_len``,
``num_examples``, ``batch_size``, ``learning_rate``, ``num_epochs``, ``weight_ce``,
``weight_precision``, ``precisions``, ``random_state``) plus a target mean width and any
engine field; ``quantized`` says which multi-precision model is routed; ``router`` how the
routers decide; ``evaluation`` the budgets compared; ``register`` the registry name;
``switchable`` where the switchable model comes from when the pipeline runs on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from router_pipelines.config import (
    RegisterConfig,
    check_bool,
    check_choice,
    check_int,
    config_from_dict,
    unknown_keys_message,
)
from router_pipelines.families.precision_router import RouterEvalConfig, RouterLossConfig
from router_pipelines.model_source import ModelSourceConfig
from router_pipelines.models.precision_router import RouterConfig
from router_pipelines.models.quantization import check_bit_width
from router_pipelines.training.config import TrainingConfig

QUANTIZED_SOURCES = ("switchable", "path", "ptq")
PROGRESS_METRICS = {  # the seed's progress bar: "Loss: 3.2456, CE: 2.1234, Prec: ..., AvgPrec: ..."
    "train_ce": "CE",
    "train_precision_loss": "Prec",
    "train_avg_precision": "AvgPrec",
}


@dataclass
class QuantizedModelConfig:
    """``precision_router.quantized``: the frozen multi-precision model the router routes."""

    source: str = "switchable"  # switchable (switchable.model) | path | ptq
    model_path: str | None = None  # path: a SwitchableLM folder (the seed's quantized model)
    name_or_path: str | None = None  # ptq: a hub id / local folder; null: the base LM
    trust_remote_code: bool = False
    bit_widths: list[int] = field(default_factory=lambda: [2, 3, 4, 5, 6, 8])  # ptq widths
    act_bits: Any = 8  # ptq activation policy: 2..8, "same" or null
    calibration_examples: int = 16  # ptq: training rows that set the quantizer steps

    def __post_init__(self) -> None:
        check_choice("source", self.source, QUANTIZED_SOURCES)
        check_bool("trust_remote_code", self.trust_remote_code)
        check_int("calibration_examples", self.calibration_examples, minimum=1)
        if not isinstance(self.bit_widths, list) or len(self.bit_widths) < 2:
            raise ValueError(f"bit_widths: expected at least two widths, got {self.bit_widths!r}")
        self.bit_widths = sorted(check_bit_width("bit_widths", b) for b in self.bit_widths)
        if self.source == "path" and not self.model_path:
            raise ValueError(
                "model_path: source is 'path', so give the multi-precision model folder"
            )


@dataclass
class RouterTrainingConfig(TrainingConfig):
    """``precision_router.training``: the seed's options and every engine field.

    ``max_steps``, ``eval_steps``, ``save_steps`` and ``seed`` are derived: ``num_epochs``
    epochs of ``num_examples // batch_size`` steps, an evaluation and a checkpoint per epoch,
    ``seed = random_state``.
    """

    output_dir: str = "data/06_models/checkpoints/precision_router"
    dataset: str | None = None  # null: the data pipeline's corpus (choose it with data.*)
    seq_len: int | None = None  # null: data.seq_len; else the first seq_len tokens of a row
    num_examples: int = 1000
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    num_epochs: int = 10
    weight_ce: float = 0.7
    weight_precision: float = 0.3
    target_bits: float | None = None  # penalty target_weight·(mean bits - target_bits)²
    target_weight: float = 1.0
    precision_scale: float = 5.0  # fixed-weight penalty at the highest width, in nats
    precisions: list[int] | None = None  # null: every width the model has
    random_state: int = 42
    save_only_trainable: bool = True  # checkpoints hold the router only
    save_best_model: bool = True
    load_best_model_at_end: bool = True  # the best router by validation loss
    progress_metrics: dict[str, str] = field(  # the seed's bar: CE, Prec, AvgPrec
        default_factory=lambda: dict(PROGRESS_METRICS)
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dataset is not None:
            raise ValueError(
                f"dataset: {self.dataset!r}: the router trains on the data pipeline's corpus; "
                f"choose it with data.hub_dataset={self.dataset} (c4, wikitext2, ptb, pileval) or "
                "data.raw_path, and leave dataset null"
            )
        if self.seq_len is not None:
            check_int("seq_len", self.seq_len, minimum=2)
        check_int("num_examples", self.num_examples, minimum=1)
        check_int("num_epochs", self.num_epochs, minimum=1)
        check_int("random_state", self.random_state, minimum=0)
        if self.precisions is not None:
            if not isinstance(self.precisions, list) or len(self.precisions) < 2:
                raise ValueError(
                    f"precisions: expected null or at least two widths, got {self.precisions!r}"
                )
            self.precisions = sorted(check_bit_width("precisions", b) for b in self.precisions)
        if self.num_examples < self.batch_size:
            raise ValueError(
                f"num_examples: {self.num_examples} is smaller than batch_size "
                f"{self.batch_size}; an epoch would have no step"
            )
        self.loss  # noqa: B018 - builds (and so checks) the loss weights now

    @property
    def loss(self) -> RouterLossConfig:
        return RouterLossConfig(
            weight_ce=self.weight_ce,
            weight_precision=self.weight_precision,
            target_bits=self.target_bits,
            target_weight=self.target_weight,
            precision_scale=self.precision_scale,
        )

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    def engine_config(self) -> TrainingConfig:
        """The engine fields with the derived step counts (see the class docstring)."""
        steps = self.steps_per_epoch
        return replace(
            self,
            max_steps=self.num_epochs * steps,
            eval_steps=steps,
            save_steps=steps,
            seed=self.random_state,
        )


@dataclass
class PrecisionRouterParams:
    switchable: ModelSourceConfig = field(
        default_factory=lambda: ModelSourceConfig(source="auto", registry_name="switchable_lm")
    )
    quantized: QuantizedModelConfig = field(default_factory=QuantizedModelConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    training: RouterTrainingConfig = field(default_factory=RouterTrainingConfig)
    evaluation: RouterEvalConfig = field(default_factory=RouterEvalConfig)
    register: RegisterConfig = field(
        default_factory=lambda: RegisterConfig(name="precision_router")
    )


GROUPS = ("switchable", "quantized", "router", "training", "evaluation", "register")


def parse_precision_router_params(params: dict[str, Any] | None) -> PrecisionRouterParams:
    """Validate the ``precision_router`` group; errors name ``precision_router.<group>.<key>``.

    A missing sub-group takes its defaults, so a node can pass only the sub-groups it reads.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(GROUPS))
    if unknown:
        raise ValueError(unknown_keys_message("precision_router", unknown, GROUPS))
    parsed = config_from_dict(PrecisionRouterParams, params, "precision_router")
    training = parsed.training
    try:  # the derived step counts against the engine's own rules (warmup <= max_steps, ...)
        training.engine_config()
    except ValueError as err:
        raise ValueError(
            f"precision_router.training.{err} (max_steps = num_epochs * "
            f"(num_examples // batch_size) = {training.num_epochs * training.steps_per_epoch})"
        ) from None
    if training.target_bits is not None and training.precisions is not None:
        low, high = training.precisions[0], training.precisions[-1]
        if not low <= training.target_bits <= high:
            raise ValueError(
                f"precision_router.training.target_bits: {training.target_bits} is outside the "
                f"routed widths {training.precisions}; use a value from {low} to {high}"
            )
    return parsed
