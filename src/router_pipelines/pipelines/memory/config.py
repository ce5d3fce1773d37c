"""The ``memory`` parameter group (seed 002): adapter, LoRA, chat data, training, evaluation.

The seed's ``training:`` block maps onto these sub-groups: its learning rates, distributed and
precision fields are ``memory.training`` (the engine's :class:`TrainingConfig` extended);
``training_mode``, ``dataset_name`` / ``dataset_subset`` / ``dataset_split``, ``text_field``
and ``max_length`` are ``memory.chat_data.mode`` / ``hub_dataset`` / ``hub_subset`` /
``hub_split`` / ``text_field`` / ``seq_len`` (the data layer's :class:`DataConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from router_pipelines.config import (
    RegisterConfig,
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    config_from_dict,
    unknown_keys_message,
)
from router_pipelines.data.config import DataConfig
from router_pipelines.families.memory import DEFAULT_COEFS
from router_pipelines.model_source import ModelSourceConfig
from router_pipelines.models.memory import LoraSettings, MemoryConfig
from router_pipelines.pipelines.pretrain.config import LRFinderConfig
from router_pipelines.training.config import TrainingConfig

STRATEGIES = ("ddp", "fsdp")
FSDP_SHARDING = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD")
SAVE_PRECISIONS = ("fp32", "fp16", "bf16")
MEMORY_PATTERN = r"^memory\."  # parameter names of the adapter (MemoryAdapter.memory)
LORA_PATTERN = r"lora_"  # peft's LoRA weights inside the base


def _positive_lr(name: str, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name}: expected a positive learning rate or null, got {value!r}")


@dataclass
class MemoryTrainingConfig(TrainingConfig):
    """``memory.training``: every engine field plus the seed's memory-specific ones.

    ``memory_lr`` / ``lora_lr`` / ``base_model_lr`` become the engine's ``param_groups``
    (null: ``learning_rate``); the base is frozen unless ``train_base``.
    """

    output_dir: str = "data/06_models/checkpoints/memory"
    memory_lr: float | None = 2e-4
    lora_lr: float | None = 1e-4
    base_model_lr: float | None = 1e-5
    train_base: bool = False  # train the base's own weights too (at base_model_lr)
    load_balance_coef: float = DEFAULT_COEFS["load_balance"]
    auxiliary_coef: float = DEFAULT_COEFS["auxiliary"]
    z_loss_coef: float = DEFAULT_COEFS["z_loss"]
    distributed_strategy: str = "ddp"  # ddp | fsdp: picks conf/accelerate/<strategy>.yaml
    fsdp_sharding_strategy: str = "FULL_SHARD"
    save_precision: str = "fp32"  # dtype of the saved model folder: fp32 | fp16 | bf16
    save_only_trainable: bool = True  # checkpoints hold the adapter (and LoRA), not the base
    save_consolidated: bool = True  # + consolidated.safetensors (every weight) per checkpoint
    router_calibration_batches: int = 8  # training batches that set standardised routers' stats
    metric_for_best_model: str = "eval_chat_loss"  # eval sets are named chat and text

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("memory_lr", "lora_lr", "base_model_lr"):
            _positive_lr(name, getattr(self, name))
        check_bool("train_base", self.train_base)
        check_bool("save_consolidated", self.save_consolidated)
        check_int("router_calibration_batches", self.router_calibration_batches, minimum=1)
        for name in ("load_balance_coef", "auxiliary_coef", "z_loss_coef"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name}: expected a number >= 0, got {value!r}")
        check_choice("distributed_strategy", self.distributed_strategy, STRATEGIES)
        check_choice("fsdp_sharding_strategy", self.fsdp_sharding_strategy, FSDP_SHARDING)
        check_choice("save_precision", self.save_precision, SAVE_PRECISIONS)

    @property
    def coefs(self) -> dict[str, float]:
        return {
            "load_balance": float(self.load_balance_coef),
            "auxiliary": float(self.auxiliary_coef),
            "z_loss": float(self.z_loss_coef),
        }

    def engine_config(self, lora: bool) -> TrainingConfig:
        """The plain engine config: the three learning rates as parameter groups."""
        groups = [{"pattern": MEMORY_PATTERN, "lr": self.memory_lr or self.learning_rate}]
        if lora:
            groups.append({"pattern": LORA_PATTERN, "lr": self.lora_lr or self.learning_rate})
        fields = {name: getattr(self, name) for name in TrainingConfig.__dataclass_fields__}
        config = TrainingConfig(**fields)
        return replace(
            config,
            learning_rate=self.base_model_lr or self.learning_rate,
            param_groups=groups + list(self.param_groups),
        )


@dataclass
class MemoryEvalConfig:
    """``memory.evaluation``: batches of the final evaluation and the utilisation count."""

    batch_size: int | None = None  # null: training.eval_batch_size or batch_size
    max_batches: int | None = 20  # per split (null: all)

    def __post_init__(self) -> None:
        check_optional_int("batch_size", self.batch_size, minimum=1)
        check_optional_int("max_batches", self.max_batches, minimum=1)


def _chat_data() -> DataConfig:
    return DataConfig(
        raw_path="data/01_raw/python_docs_chat.jsonl",
        text_field="messages",
        mode="instruction",
        cache_dir="data/04_feature/token_cache",
    )


@dataclass
class MemoryParams:
    base: ModelSourceConfig = field(
        default_factory=lambda: ModelSourceConfig(source="auto", registry_name="base_lm")
    )
    adapter: MemoryConfig = field(default_factory=MemoryConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    chat_data: DataConfig = field(default_factory=_chat_data)
    training: MemoryTrainingConfig = field(default_factory=MemoryTrainingConfig)
    lr_finder: LRFinderConfig = field(default_factory=LRFinderConfig)  # sweeps memory_lr
    evaluation: MemoryEvalConfig = field(default_factory=MemoryEvalConfig)
    register: RegisterConfig = field(default_factory=lambda: RegisterConfig(name="memory_lm"))


GROUPS = (
    "base",
    "adapter",
    "lora",
    "chat_data",
    "training",
    "lr_finder",
    "evaluation",
    "register",
)


def parse_memory_params(params: dict[str, Any] | None) -> MemoryParams:
    """The whole ``memory`` group as typed configs; errors name ``memory.<group>.<key>``.

    A missing sub-group takes its defaults, so a node can pass only the sub-groups it reads.
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(GROUPS))
    if unknown:
        raise ValueError(unknown_keys_message("memory", unknown, GROUPS))
    return config_from_dict(MemoryParams, params, "memory")


def accelerate_config(training: MemoryTrainingConfig, num_processes: int = 2) -> dict[str, Any]:
    """The Accelerate config file (``accelerate launch --config_file``) for the training's
    ``distributed_strategy``; ``conf/accelerate/{ddp,fsdp}.yaml`` are its output for 2 processes.

    FSDP wraps each decoder block and keeps the original parameters (``use_orig_params``), which
    FSDP needs when frozen base weights and trainable adapter weights share a block.
    """
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "mixed_precision": "bf16" if training.mixed_precision in ("auto", "bf16") else "no",
        "num_machines": 1,
        "machine_rank": 0,
        "num_processes": num_processes,
        "use_cpu": False,
    }
    if training.distributed_strategy == "fsdp":
        config["distributed_type"] = "FSDP"
        config["fsdp_config"] = {
            "fsdp_sharding_strategy": training.fsdp_sharding_strategy,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            "fsdp_use_orig_params": True,
            "fsdp_offload_params": False,
            "fsdp_sync_module_states": True,
        }
    return config
