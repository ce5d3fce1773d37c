"""The ``query_router`` parameter group.

``queries`` (how queries are cut from the validation split), ``outcomes`` (the ladder of models
scored on them and the label quantiles), ``data`` (the seed's JSONL instead of measured labels),
``prompt`` (the router's instruction), ``router`` (its base LM), ``training`` (the shared engine,
counted in epochs like the seed's SFT), ``evaluation`` and ``register``; ``switchable`` says
where the switchable model comes from when the pipeline runs on its own, ``source`` whether a
saved or registered router with the same identity is reused; ``ladder_lm`` is the ladder's
model of another size (rung ``ladder_lm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from router_pipelines.config import (
    RegisterConfig,
    check_fraction,
    check_int,
    config_from_dict,
    unknown_keys_message,
)
from router_pipelines.families.query_router import LADDER_LM, PromptConfig, QueryConfig
from router_pipelines.families.query_router.prompts import MODEL_FIELD
from router_pipelines.model_source import ModelSourceConfig, check_trained_source
from router_pipelines.models.presets import ModelConfig
from router_pipelines.training.config import TrainingConfig

SYMBOLIC_RUNGS = ("lowest", "highest")
# What register_router reports (and tags on both registered models): the promotion rule's
# metric and cost_metric must be among them (checked before the run, checks.py).
HEADLINE_METRICS = ("router_apgr", "router_cpt_50", "oracle_apgr", "oracle_cpt_50")
COSTS = ("bytes", "seconds")


@dataclass
class OutcomeConfig:
    """``query_router.outcomes``: the ladder, cheapest first (widths of the switchable model:
    2..8, ``fp``, ``lowest``, ``highest``; and ``ladder_lm``, the model of another size of
    ``query_router.ladder_lm``), label quantiles and the ladder's cost axis."""

    ladder: list[Any] = field(default_factory=lambda: [LADDER_LM, "highest"])
    label_quantiles: list[float] = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8])
    cost: str = "bytes"  # bytes | seconds: the cost axis of the ladder's curves
    batch_size: int = 32  # queries per scoring forward pass (padded; same numbers as batch 1)
    warmup: int = 1  # untimed batches per rung before timing

    def __post_init__(self) -> None:
        if not isinstance(self.ladder, list) or len(self.ladder) < 2:
            raise ValueError(
                f"ladder: {self.ladder!r} needs at least a cheap and a strong model, e.g. "
                "[lowest, highest] or [2, 4, 8]"
            )
        for rung in self.ladder:
            valid = rung in (*SYMBOLIC_RUNGS, "fp", LADDER_LM) or (
                isinstance(rung, int) and not isinstance(rung, bool) and 2 <= rung <= 8
            )
            if not valid:
                raise ValueError(
                    f"ladder: rung {rung!r} is not allowed; use 2..8, 'fp', 'lowest', 'highest' "
                    f"(widths of the switchable model) or {LADDER_LM!r} (query_router.ladder_lm)"
                )
        if len(set(map(str, self.ladder))) != len(self.ladder):
            raise ValueError(
                f"ladder: {self.ladder} names a model twice; the cheap and strong models "
                "must be different"
            )
        quantiles = self.label_quantiles
        if (
            len(quantiles) != 4
            or any(not 0 < q < 1 for q in quantiles)
            or sorted(quantiles) != quantiles
        ):
            raise ValueError(
                f"label_quantiles: {quantiles} must be 4 increasing fractions in (0, 1) (the "
                "edges between scores 5|4|3|2|1)"
            )
        if self.cost not in COSTS:
            raise ValueError(f"cost: {self.cost!r} is not allowed; choose one of {list(COSTS)}")
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("warmup", self.warmup, minimum=0)


@dataclass
class LadderLMConfig:
    """``query_router.ladder_lm``: the ladder's model of another size (rung ``ladder_lm``), a
    causal LM on the data's tokenizer. ``model`` and ``training`` are ``pretrain``'s fields:
    it is trained like the base LM (same code, engine, tokens and steps), by default at the
    ``debug`` preset, smaller than the base LM; ``source: auto`` reuses a saved one with the
    same identity; ``source: pretrained`` takes ``model.name_or_path`` as it is. Trained only
    when the ladder names ``ladder_lm``."""

    source: ModelSourceConfig = field(
        default_factory=lambda: ModelSourceConfig(source="auto", registry_name="ladder_lm")
    )
    model: ModelConfig = field(default_factory=lambda: ModelConfig(preset="debug"))
    training: TrainingConfig = field(
        default_factory=lambda: TrainingConfig(
            output_dir="data/06_models/checkpoints/query_router_ladder_lm"
        )
    )


@dataclass
class SeedDataConfig:
    """``query_router.data``: train the router on the seed's JSONL instead of measured labels
    (calibration and evaluation stay on the measured queries)."""

    jsonl_path: str | None = None  # null: labels measured from our own models
    n_sample: int | None = 1000  # the seed's prepare_subsampled_dataset(n_sample=1000)
    random_state: int = 42
    test_size: float = 0.1  # the seed's 90/10 train/eval split, seed 42
    split_seed: int = 42

    def __post_init__(self) -> None:
        if self.n_sample is not None:
            check_int("n_sample", self.n_sample, minimum=1)
        check_fraction("test_size", self.test_size, include_zero=False)


@dataclass
class RouterModelConfig:
    """``query_router.router``: the base LM fine-tuned as router."""

    name_or_path: str | None = None  # null: the project's base LM (pretrain.model); else a
    # causal LM by hub id or local folder (the seed: unsloth/Llama-3.1-8B)
    trust_remote_code: bool = False


@dataclass
class RouterTrainingConfig(TrainingConfig):
    """``query_router.training``: the engine's fields; ``num_train_epochs`` sets ``max_steps``,
    and with ``eval_and_save_every_epoch`` an evaluation and a checkpoint close each epoch."""

    output_dir: str = "data/06_models/checkpoints/query_router"
    num_train_epochs: int = 3
    eval_and_save_every_epoch: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_int("num_train_epochs", self.num_train_epochs, minimum=1)


@dataclass
class RouterEvalConfig:
    """``query_router.evaluation``."""

    target_shares: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.8])
    serving_target_share: float = 0.5  # the strong share the registered router aims at
    cpt_targets: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.8])
    random_seed: int = 0
    batch_size: int = 16
    ladder_taus: int = 21  # thresholds on P(good enough) swept for the ladder

    def __post_init__(self) -> None:
        for key in ("target_shares", "cpt_targets"):
            for value in getattr(self, key):
                if (
                    isinstance(value, bool)
                    or not isinstance(value, (int, float))
                    or not (0 <= value <= 1)
                ):
                    raise ValueError(f"{key}: {value!r} is outside [0, 1]")
        value = self.serving_target_share
        if not 0 <= value <= 1:
            raise ValueError(f"serving_target_share: {value!r} is outside [0, 1]")
        check_int("batch_size", self.batch_size, minimum=1)
        check_int("ladder_taus", self.ladder_taus, minimum=2)


@dataclass
class RouterRegisterConfig(RegisterConfig):
    """``query_router.register``: the router, and the routed LM (router + switchable model)."""

    name: str = "query_router"
    routed_name: str = "routed_lm"


@dataclass
class QueryRouterParams:
    switchable: ModelSourceConfig = field(
        default_factory=lambda: ModelSourceConfig(source="auto", registry_name="switchable_lm")
    )
    source: ModelSourceConfig = field(  # where the router comes from: reuse or train
        default_factory=lambda: ModelSourceConfig(source="auto", registry_name="query_router")
    )
    queries: QueryConfig = field(default_factory=QueryConfig)
    outcomes: OutcomeConfig = field(default_factory=OutcomeConfig)
    ladder_lm: LadderLMConfig = field(default_factory=LadderLMConfig)
    data: SeedDataConfig = field(default_factory=SeedDataConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    router: RouterModelConfig = field(default_factory=RouterModelConfig)
    training: RouterTrainingConfig = field(default_factory=RouterTrainingConfig)
    evaluation: RouterEvalConfig = field(default_factory=RouterEvalConfig)
    register: RouterRegisterConfig = field(default_factory=RouterRegisterConfig)

    def __post_init__(self) -> None:
        check_trained_source(self.source, "routers")


GROUPS = (
    "switchable",
    "source",
    "queries",
    "outcomes",
    "ladder_lm",
    "data",
    "prompt",
    "router",
    "training",
    "evaluation",
    "register",
)


def parse_query_router_params(params: dict[str, Any] | None) -> QueryRouterParams:
    """Validate the ``query_router`` group before any work; errors name the bad key.

    Raises:
        ValueError: an unknown key; a ladder with fewer than two or repeated models; a target
            strong share outside [0, 1]; a ladder of more than two models whose user template
            has no ``{model}`` field (the router could not tell the rungs apart); ...
    """
    params = dict(params or {})
    unknown = sorted(set(params) - set(GROUPS))
    if unknown:
        raise ValueError(unknown_keys_message("query_router", unknown, GROUPS))
    parsed = config_from_dict(QueryRouterParams, params, "query_router")
    both = "outcomes" in params and "prompt" in params  # a node may pass only its sub-groups
    if both and len(parsed.outcomes.ladder) > 2 and MODEL_FIELD not in parsed.prompt.user_template:
        raise ValueError(
            f"query_router.prompt.user_template: a ladder of {len(parsed.outcomes.ladder)} "
            f"models ({parsed.outcomes.ladder}) needs a {MODEL_FIELD} field in the user template "
            "so the router predicts each rung's score"
        )
    return parsed


def resolve_ladder(ladder: list[Any], bit_widths: list[int]) -> list[Any]:
    """Ladder entries as widths of the switchable model (``lowest`` / ``highest`` resolved),
    cheapest first; ``fp`` stays ``"fp"`` and ``ladder_lm`` stays ``"ladder_lm"`` (its place
    among the widths is checked on its measured bytes, :func:`check_rung_order`).

    Raises:
        ValueError: a width the model was not trained for, the same model twice, or widths
            out of order.
    """
    widths = sorted(int(w) for w in bit_widths)
    resolved = []
    for rung in ladder:
        value = {"lowest": widths[0], "highest": widths[-1]}.get(rung, rung)
        if value not in ("fp", LADDER_LM) and value not in widths:
            raise ValueError(
                f"query_router.outcomes.ladder: width {rung!r} is not one of the switchable "
                f"model's widths {widths} (or fp)"
            )
        resolved.append(value)
    if len(set(map(str, resolved))) != len(resolved):
        raise ValueError(
            f"query_router.outcomes.ladder: {ladder} resolves to {resolved} on widths {widths}: "
            "the cheap and strong models are the same"
        )
    order = [99 if r == "fp" else r for r in resolved if r != LADDER_LM]
    if order != sorted(order):
        raise ValueError(
            f"query_router.outcomes.ladder: {resolved} must go from the cheapest to the "
            "strongest model"
        )
    return resolved


def check_rung_order(names: list[str], weight_bytes: list[int]) -> None:
    """The ladder goes from the cheapest model to the strongest by the weight bytes each reads
    per generated token (measured on the models, not assumed).

    Raises:
        ValueError: a rung reads more bytes than the next one, naming both.
    """
    for (a, bytes_a), (b, bytes_b) in pairwise(zip(names, weight_bytes, strict=True)):
        if bytes_a > bytes_b:
            raise ValueError(
                f"query_router.outcomes.ladder: {names} must go from the cheapest to the "
                f"strongest model, but {a!r} reads {bytes_a:,} weight bytes per token and the "
                f"next rung {b!r} {bytes_b:,}; reorder the ladder or change "
                "query_router.ladder_lm.model"
            )


def rung_name(width: Any) -> str:
    if width in ("fp", LADDER_LM):
        return str(width)
    return f"{int(width)}bit"
