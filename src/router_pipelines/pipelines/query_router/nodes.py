"""Nodes of the ``query_router`` namespace (seed 004): queries, measured outcomes, router SFT.

Heavy libraries are imported inside the nodes, so listing or validating pipelines stays fast.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Any

from router_pipelines.pipelines.common import history_figure, thin_history, trained_summary
from router_pipelines.pipelines.query_router.config import (
    LADDER_LM,
    check_rung_order,
    parse_query_router_params,
    resolve_ladder,
    rung_name,
)

logger = logging.getLogger(__name__)

FAMILY = "query_router"


def cut_router_queries(validation_tokens: Any, queries_params: dict[str, Any]) -> Any:
    """Queries (prompt + held-out reference windows) from the validation blocks, split by block
    into train / calibration / test."""
    from router_pipelines.families.query_router import cut_queries

    config = parse_query_router_params({"queries": queries_params}).queries
    return cut_queries(validation_tokens.input_ids, validation_tokens.attention_mask, config)


def provide_ladder_lm(
    train_tokens: Any,
    validation_tokens: Any,
    tokenizer: Any,
    switchable_model: Any,
    saved_models: Any,
    model_registry: Any,
    outcomes_params: dict[str, Any],
    ladder_lm_params: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The ladder's model of another size (``query_router.ladder_lm``), trained like the base
    LM by the pretrain code on the same tokens (metrics logged as ``ladder_lm_*``), reused when
    a saved one has the same identity, or a pretrained causal LM as is; a skip marker when the
    ladder does not name ``ladder_lm``. A from-scratch model's place in the ladder (by weight
    bytes against the switchable model's rungs) is checked on a weightless build first, so a
    misordered ladder fails before any training.

    Returns:
        The model bundle (or ``{"enabled": False, ...}``) and its summary.
    """
    from router_pipelines.pipelines.pretrain.nodes import train_base_model

    params = parse_query_router_params({"outcomes": outcomes_params, "ladder_lm": ladder_lm_params})
    if LADDER_LM not in params.outcomes.ladder:
        reason = f"query_router.outcomes.ladder {params.outcomes.ladder} has no {LADDER_LM!r}"
        logger.info("No ladder LM: %s", reason)
        marker = {"enabled": False, "reason": reason}
        return marker, marker
    config = params.ladder_lm
    if config.model.name_or_path is None:
        from types import SimpleNamespace

        planned = SimpleNamespace(model=_weightless(config.model, tokenizer), tokenizer=tokenizer)
        ladder_rungs(switchable_model, planned, params.outcomes.ladder)
    bundle, summary, _figure, _resolved = train_base_model(
        train_tokens,
        validation_tokens,
        tokenizer,
        saved_models,
        model_registry,
        dataclasses.asdict(config.model),
        dataclasses.asdict(config.training),
        {"enabled": False},
        {"enabled": False, "name": config.source.registry_name or LADDER_LM},
        dataclasses.asdict(config.source),
        source_key="query_router.ladder_lm.source",
        metric_prefix=f"{LADDER_LM}_",
    )
    logger.info("Ladder LM (%s): %s", config.model.name_or_path or config.model.preset, summary)
    return bundle, summary


def _weightless(model_config: Any, tokenizer: Any) -> Any:
    """A from-scratch preset model on the meta device: its shape, no weights."""
    import torch

    from router_pipelines.models.presets import build_causal_lm

    with torch.device("meta"):
        return build_causal_lm(model_config, tokenizer)


def ladder_lm_bundle(ladder_lm: Any, ladder: list[Any]) -> Any:
    """The ladder LM a ladder naming ``ladder_lm`` needs: the bundle, not a skip marker.

    Raises:
        ValueError: ``ladder_lm`` is a skip marker (or missing), with its reason.
    """
    if isinstance(ladder_lm, dict) or ladder_lm is None:
        raise ValueError(
            f"query_router.outcomes.ladder: {ladder} names {LADDER_LM!r} but no ladder LM was "
            f"provided ({(ladder_lm or {}).get('reason', 'skipped')})"
        )
    return ladder_lm


def ladder_rungs(switchable_model: Any, ladder_lm: Any, ladder: list[Any]) -> list[Any]:
    """The ladder as :class:`Rung` s: widths of one switchable model, and ``ladder_lm``.

    Raises:
        ValueError: a width the switchable model lacks, the same model twice, a ladder not
            ordered by measured weight bytes, or ``ladder_lm`` asked for but skipped.
    """
    from router_pipelines.families.query_router import Rung
    from router_pipelines.families.switchable.bits import bit_report, fp_weight_bytes

    model = switchable_model.model
    widths = resolve_ladder(ladder, list(model.switchable_config.bit_widths))
    rungs = []
    for width in widths:
        if width == LADDER_LM:
            ladder_lm = ladder_lm_bundle(ladder_lm, ladder)
            rungs.append(
                Rung(
                    LADDER_LM,
                    ladder_lm.model,
                    ladder_lm.tokenizer,
                    weight_bytes=fp_weight_bytes(ladder_lm.model),
                )
            )
            continue
        bits = None if width == "fp" else int(width)
        model.set_precision(bits)
        rungs.append(
            Rung(
                rung_name(width),
                model,
                switchable_model.tokenizer,
                prepare=lambda bits=bits: model.set_precision(bits),
                weight_bytes=int(bit_report(model)["weight_bytes"]),
            )
        )
    model.set_precision(None)
    check_rung_order([r.name for r in rungs], [r.weight_bytes for r in rungs])
    return rungs


def measure_outcomes(
    queries: Any, switchable_model: Any, ladder_lm: Any, outcomes_params: dict[str, Any]
) -> Any:
    """Quality and measured cost of every rung of the ladder on every query, and the labels.

    Returns:
        One row per query: ``question`` and ``reference`` text, ``quality_/token_accuracy_/
        seconds_/bytes_<rung>``, ``gap_/label_<rung>`` below the strongest, ``cheap_*`` /
        ``strong_*`` columns and ``label`` (the cheap model's score, 1..5).
    """
    from router_pipelines.families.query_router import add_labels, add_question_text, score_rungs
    from router_pipelines.tracking import log_metrics

    config = parse_query_router_params({"outcomes": outcomes_params}).outcomes
    rungs = ladder_rungs(switchable_model, ladder_lm, config.ladder)
    scored = score_rungs(queries, rungs, warmup=config.warmup, batch_size=config.batch_size)
    switchable_model.model.set_precision(None)
    outcomes, edges = add_labels(scored, [r.name for r in rungs], config.label_quantiles)
    outcomes = add_question_text(outcomes, switchable_model.tokenizer)
    outcomes["label_edges"] = [list(map(float, edges))] * len(outcomes)
    metrics = {
        f"{kind}_{r.name}": float(outcomes[f"{kind}_{r.name}"].mean())
        for r in rungs
        for kind in ("quality", "seconds", "bytes")
    }
    log_metrics({"queries": len(outcomes), **metrics})
    logger.info("Outcomes of %d queries on %s", len(outcomes), [r.name for r in rungs])
    return outcomes


def router_prompts(outcomes: Any, params: Any, rungs: list[str]) -> tuple[list[str], list[int]]:
    """Prompts and labels of ``outcomes`` rows: one per row for two models (the cheap model's
    label, the seed's format); one per row and rung below the strongest for a ladder."""
    from router_pipelines.families.query_router import router_prompt

    with_model = len(rungs) > 2
    prompts, labels = [], []
    for name in rungs[:-1]:
        for question, label in zip(outcomes["question"], outcomes[f"label_{name}"], strict=True):
            prompts.append(router_prompt(question, params.prompt, name if with_model else None))
            labels.append(int(label))
    return prompts, labels


def ladder_names(outcomes: Any) -> list[str]:
    """The rung names of an outcomes table, cheapest first (from its ``quality_*`` columns)."""
    return [c.removeprefix("quality_") for c in outcomes.columns if c.startswith("quality_")]


def train_router(
    outcomes: Any,
    base_model: Any,
    saved_models: Any,
    model_registry: Any,
    prompt_params: dict[str, Any],
    router_params: dict[str, Any],
    data_params: dict[str, Any],
    training_params: dict[str, Any],
    source_params: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any], Any]:
    """Fine-tune the router to answer ``[[1]]``..``[[5]]`` (loss on the label token only), or
    reuse a saved / registered router with the same identity (``query_router.source``).

    Training examples: the training split's measured labels (or the seed's JSONL with
    ``query_router.data.jsonl_path``, split 90/10 with seed 42); the engine's eval set: the
    calibration split (the seed JSONL's 10%). ``num_train_epochs`` sets ``max_steps``; an
    evaluation and a checkpoint close every epoch. The identity covers the base LM's
    fingerprint, the prompt, the router and training settings and a digest of every training
    and evaluation example (prompt text and label): the labels carry the data and the cheap
    and strong models, so a change upstream retrains.

    Returns:
        The router bundle (family ``query_router``), a training summary and the loss figure.
    """
    from router_pipelines.families.query_router import (
        RouterExamples,
        make_router_loss,
        read_seed_records,
        seed_record_text,
        seed_split,
    )
    from router_pipelines.model_source import IDENTITY_KEY, ModelIdentity, decide_source
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.models.query_router import LABEL_TOKENS, add_label_tokens
    from router_pipelines.pipelines.common import reused_summary
    from router_pipelines.storage import digest_json
    from router_pipelines.tracking import metric_logger
    from router_pipelines.training import Trainer, result_affecting_fields

    params = parse_query_router_params(
        {
            "prompt": prompt_params,
            "router": router_params,
            "data": data_params,
            "training": training_params,
        }
    )
    model, tokenizer, base_name = _router_base(base_model, params)
    label_ids = add_label_tokens(model, tokenizer)
    positions = _positions(model)
    rungs = ladder_names(outcomes)
    if params.data.jsonl_path:
        records = read_seed_records(
            params.data.jsonl_path, params.data.n_sample, params.data.random_state
        )
        train_rows, eval_rows = seed_split(records, params.data.test_size, params.data.split_seed)
        train_set = RouterExamples(
            [seed_record_text(r) for _, r in train_rows.iterrows()],
            train_rows["score"].tolist(),
            tokenizer,
            positions,
        )
        eval_set = RouterExamples(
            [seed_record_text(r) for _, r in eval_rows.iterrows()],
            eval_rows["score"].tolist(),
            tokenizer,
            positions,
        )
        source = {"jsonl": params.data.jsonl_path, "records": len(records)}
    else:
        train_set = RouterExamples(
            *router_prompts(outcomes[outcomes["split"] == "train"], params, rungs),
            tokenizer,
            positions,
        )
        eval_set = RouterExamples(
            *router_prompts(outcomes[outcomes["split"] == "calibration"], params, rungs),
            tokenizer,
            positions,
        )
        source = {"measured": rungs}
    training = _epoch_schedule(params.training, len(train_set))
    identity = ModelIdentity(
        {
            "family": FAMILY,
            "base": base_name,
            "router": dataclasses.asdict(params.router),
            "prompt": dataclasses.asdict(params.prompt),
            "labels": source,
            "examples": digest_json([train_set.input_ids.tolist(), eval_set.input_ids.tolist()]),
            "training": result_affecting_fields(training),
        }
    )
    decision = decide_source(
        source_params,
        "query_router.source",
        identity,
        saved_models,
        model_registry,
        registry_name=FAMILY,
    )
    if decision.reused:
        summary = reused_summary(decision)
        logger.info("Query router reused from %s", decision.where)
        return decision.bundle, summary, history_figure(decision.metadata, "query router")
    trainer = Trainer(
        model,
        make_router_loss(label_ids),
        train_set,
        eval_set,
        config=training,
        log_fn=metric_logger(),
        run_config={k: v for k, v in identity.inputs.items() if k != "training"},
    )
    result = trainer.train()
    summary = trained_summary(
        result,
        identity,
        examples=len(train_set),
        eval_examples=len(eval_set),
        epochs=training.num_train_epochs,
        label_source=source,
    )
    logger.info("Query router trained: %s", summary)
    bundle = ModelBundle(
        model=result.model.cpu(),
        tokenizer=tokenizer,
        metadata={
            "family": FAMILY,
            "training": summary,
            "label_tokens": list(LABEL_TOKENS),
            "label_token_ids": label_ids,
            "prompt": dataclasses.asdict(params.prompt),
            "ladder": rungs,
            IDENTITY_KEY: identity.to_metadata(),
            "history": thin_history(result.history),
        },
    )
    return bundle, summary, history_figure(bundle.metadata, "query router (label-token SFT)")


def _router_base(base_model: Any, params: Any) -> tuple[Any, Any, str]:
    """A copy of the project's base LM (or the named causal LM) and its tokenizer."""
    if params.router.name_or_path is None:
        from router_pipelines.model_source import fingerprint_of

        model = copy.deepcopy(base_model.model)
        model.requires_grad_(True)
        name = fingerprint_of(base_model.metadata) or "pretrain.model"
        return model, copy.deepcopy(base_model.tokenizer), name
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = params.router.name_or_path
    trust = params.router.trust_remote_code
    model = AutoModelForCausalLM.from_pretrained(where, trust_remote_code=trust)
    tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer, where


def _positions(model: Any) -> int:
    config = model.config
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if value:
            return int(value)
    return 1 << 20


def _epoch_schedule(training: Any, n_examples: int) -> Any:
    """``max_steps`` from ``num_train_epochs``; eval and checkpoint every epoch if asked."""
    per_step = training.batch_size * training.gradient_accumulation_steps
    steps_per_epoch = max(1, math.ceil(n_examples / per_step))
    changes: dict[str, Any] = {"max_steps": steps_per_epoch * training.num_train_epochs}
    if training.eval_and_save_every_epoch:
        changes.update(eval_steps=steps_per_epoch, save_steps=steps_per_epoch)
    return dataclasses.replace(training, **changes)
