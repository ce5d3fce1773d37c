"""Nodes of the ``memory`` namespace (seed 002): chat tokens, train, evaluate, register.

Heavy libraries (torch, transformers, mlflow) are imported inside the nodes, so listing or
validating pipelines stays fast.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

from router_pipelines.model_source import (
    FINGERPRINT_TAG,
    IDENTITY_KEY,
    ModelIdentity,
    fingerprint_of,
)
from router_pipelines.pipelines.common import (
    history_figure,
    registration_skipped,
    thin_history,
    trained_summary,
)


def parse_memory_params(group: dict[str, Any]) -> Any:
    """:func:`router_pipelines.pipelines.memory.config.parse_memory_params`, imported on use
    (the configs import torch; listing pipelines does not need it)."""
    from router_pipelines.pipelines.memory.config import parse_memory_params as parse

    return parse(group)


logger = logging.getLogger(__name__)

FAMILY = "memory"
HEADLINE = ("chat_validation_loss", "chat_bits_per_byte", "forgetting", "utilisation_entropy")
# What register_memory reports (version tags; promotion.rules.memory reads its metric and cost)
REGISTERED_METRICS = (*HEADLINE, "trainable_parameters")


def tokenize_chat_corpus(
    corpus_split: Any, base_model: Any, chat_data_params: dict[str, Any]
) -> tuple[Any, Any, dict[str, Any]]:
    """Tokenize the chat corpus with the base model's tokenizer (through the token cache).

    Returns:
        ``(chat_train_tokens, chat_validation_tokens, chat_data_report)``; in instruction mode
        the labels are -100 everywhere but on the assistant's tokens.
    """
    from router_pipelines.data.prepare import prepare_token_data
    from router_pipelines.hooks import main_process_first

    config = parse_memory_params({"chat_data": chat_data_params}).chat_data
    with main_process_first():
        tokens = prepare_token_data(corpus_split, config, tokenizer=base_model.tokenizer)
    counts = tokens.meta["counts"]
    report = {
        "fingerprint": tokens.fingerprint,
        "cache_hit": tokens.cache_hit,
        "source": corpus_split.corpus.source,
        "mode": config.mode,
        "seq_len": config.seq_len,
        **{
            f"{split}_{key}": int(counts[split][key])
            for split in ("train", "validation")
            for key in ("rows", "tokens", "supervised_tokens", "truncated", "dropped")
        },
    }
    logger.info("chat data report: %s", report)
    return tokens.train, tokens.validation, report


def train_memory(
    base_model: Any,
    chat_train_tokens: Any,
    chat_validation_tokens: Any,
    validation_tokens: Any,
    adapter_params: dict[str, Any],
    lora_params: dict[str, Any],
    training_params: dict[str, Any],
    lr_finder_params: dict[str, Any] | None = None,
) -> tuple[Any, dict[str, Any], Any, dict[str, Any]]:
    """Train the memory adapter (± LoRA) on the chat set, on a copy of the base LM.

    Evaluates on the chat and the text validation sets (``eval_chat_*``, ``eval_text_*``) and
    logs the chapter utilisation of the chat set at every evaluation.

    Returns:
        The memory model bundle, its training summary, the loss-curve figure and the resolved
        configuration.
    """
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.models.bundle import ModelBundle
    from router_pipelines.pipelines.memory.checkpoint_files import seed_config
    from router_pipelines.pipelines.memory.training import (
        CHAT,
        TEXT,
        build_memory_model,
        log_usage_figure,
        train_memory_model,
    )
    from router_pipelines.tracking import metric_logger
    from router_pipelines.training import result_affecting_fields

    params = parse_memory_params(
        {
            "adapter": adapter_params,
            "lora": lora_params,
            "training": training_params,
            "lr_finder": lr_finder_params,
        }
    )
    training = params.training
    model = build_memory_model(
        base_model.model, params.adapter, params.lora, training.train_base, training.seed
    )
    train_set = TokenBlockDataset(chat_train_tokens)
    if params.lr_finder.enabled:
        _lr_finder(model, train_set, params)
    identity = ModelIdentity(
        {
            "family": FAMILY,
            "base": fingerprint_of(base_model.metadata),
            "adapter": asdict(params.adapter),
            "lora": asdict(params.lora),
            "training": result_affecting_fields(training),
            "data": chat_train_tokens.fingerprint,
        }
    )
    eval_sets = {
        CHAT: TokenBlockDataset(chat_validation_tokens),
        TEXT: TokenBlockDataset(validation_tokens),
    }
    result, timer = train_memory_model(
        model,
        training,
        train_set,
        eval_sets,
        lora=params.lora.enabled,
        log_fn=metric_logger(),
        run_config={k: v for k, v in identity.inputs.items() if k != "training"},
        on_counts=log_usage_figure(model.layer_indices),
        seed_config=seed_config(params.adapter, params.lora, training),
    )
    trainable = sum(p.numel() for p in result.model.parameters() if p.requires_grad)
    summary = trained_summary(
        result,
        identity,
        memory_parameters=result.model.memory_parameters(),
        lora_parameters=trainable - result.model.memory_parameters(),
        mean_step_time_s=timer.mean_step_time,
        num_chapters=params.adapter.num_chapters,
        memory_layers=result.model.layer_indices,
    )
    logger.info("memory adapter trained: %s", summary)
    result.model.save_dtype = training.save_precision
    bundle = ModelBundle(
        model=result.model.cpu().eval(),
        tokenizer=base_model.tokenizer,
        metadata={
            "family": FAMILY,
            "training": summary,
            "adapter": asdict(params.adapter),
            "lora": asdict(params.lora),
            IDENTITY_KEY: identity.to_metadata(),
            "history": thin_history({**result.history, **timer.history}),
        },
    )
    figure = history_figure(bundle.metadata, "memory adapter")
    resolved = asdict(params)
    resolved.pop("chat_data", None)
    return bundle, summary, figure, resolved


def _lr_finder(model: Any, train_set: Any, params: Any) -> None:
    from router_pipelines.pipelines.memory.training import run_lr_finder
    from router_pipelines.tracking import log_figure
    from router_pipelines.training import plot_lr_finder

    finder = run_lr_finder(
        model, train_set, params.training, params.lr_finder, lora=params.lora.enabled
    )
    logger.info("LR finder suggests memory_lr %.3g", finder.suggestion or float("nan"))
    metrics = {"lr_finder_suggestion": finder.suggestion} if finder.suggestion else {}
    log_figure(plot_lr_finder(finder), "lr_finder.png", metrics)


def evaluate_memory(
    model: Any,
    base_model: Any,
    validation_tokens: Any,
    chat_validation_tokens: Any,
    evaluation_params: dict[str, Any],
    training_params: dict[str, Any],
) -> tuple[Any, dict[str, Any], Any]:
    """The base LM and the memory model on the text and the chat validation sets.

    Returns:
        A frame with one row per (model, split): loss, perplexity, bits per byte, token
        accuracy; the headline metrics (chat loss and bpb, ``forgetting`` = the memory model's
        text loss minus the base's, utilisation); and the chapter-usage figure.
    """
    from router_pipelines.families.memory import chapter_usage_figure
    from router_pipelines.tracking import log_metrics

    frame, headline, counts = _evaluate(
        model,
        base_model,
        validation_tokens,
        chat_validation_tokens,
        evaluation_params,
        training_params,
    )
    log_metrics({k: v for k, v in headline.items() if k != "chapter_counts"})
    figure = chapter_usage_figure(
        counts.numpy(), model.model.layer_indices, "chapter usage (chat validation)"
    )
    return frame, headline, figure


def rescore_memory(
    bundle: Any,
    base_model: Any,
    validation_tokens: Any,
    chat_validation_tokens: Any,
    evaluation_params: dict[str, Any],
    training_params: dict[str, Any],
) -> dict[str, float]:
    """The registered metrics of a registered memory model (the champion, in promotion) on this
    run's validation sets, evaluated as :func:`evaluate_memory` does (same batches, same
    assistant-only labels); nothing is logged. ``forgetting`` is against this run's base, the
    one the challenger's is measured against.

    ``trainable_parameters`` cannot be read off the registered weights: the folder has LoRA
    merged into the base (``MemoryAdapter.save_pretrained``), so it is counted on the model
    rebuilt from the folder's architecture and memory config with the LoRA settings and
    ``train_base`` its metadata records, and must equal the count the metadata records.

    Raises:
        ValueError: the bundle is not a memory model, its tokenizer is not the data's, or its
            metadata lacks the LoRA or training settings or records another trainable count.
    """
    from router_pipelines.promotion import check_same_tokenizer

    if bundle.family != FAMILY:
        raise ValueError(f"the model to re-score is a {bundle.family!r} model, not {FAMILY!r}")
    check_same_tokenizer(bundle, base_model.tokenizer, "the memory model to re-score")
    trainable = _registered_trainable_parameters(bundle)  # cheap: refused before evaluating
    _, headline, _ = _evaluate(
        bundle,
        base_model,
        validation_tokens,
        chat_validation_tokens,
        evaluation_params,
        training_params,
    )
    return registered_metrics(headline, trainable)


def _registered_trainable_parameters(bundle: Any) -> int:
    """What training updated in a registered memory model (see :func:`rescore_memory`)."""
    from router_pipelines.config import config_from_dict
    from router_pipelines.model_source import identity_of
    from router_pipelines.models.memory import LoraSettings
    from router_pipelines.pipelines.memory.training import trainable_parameter_count

    metadata = bundle.metadata
    training = (identity_of(metadata) or {}).get("training")
    if not isinstance(metadata.get("lora"), dict) or not isinstance(training, dict):
        raise ValueError(
            "the memory model to re-score records no LoRA settings or training config "
            "(metadata 'lora', 'identity.inputs.training'): its trainable parameters are unknown"
        )
    lora = config_from_dict(LoraSettings, metadata["lora"], "metadata: lora")
    count = trainable_parameter_count(
        bundle.model.config, bundle.model.memory_config, lora, bool(training.get("train_base"))
    )
    recorded = (metadata.get("training") or {}).get("trainable_parameters")
    if recorded is not None and int(recorded) != count:
        raise ValueError(
            f"the memory model to re-score records {recorded} trainable parameters, but its "
            f"rebuilt model has {count} (another peft or transformers layout?)"
        )
    return count


def _evaluate(
    model: Any,
    base_model: Any,
    validation_tokens: Any,
    chat_validation_tokens: Any,
    evaluation_params: dict[str, Any],
    training_params: dict[str, Any],
) -> tuple[Any, dict[str, Any], Any]:
    """The evaluation frame, the headline metrics and the ``(L, C)`` chapter-pick counts of
    :func:`evaluate_memory`, logging nothing."""
    import pandas as pd
    import torch

    from router_pipelines.data.tokenizer import token_byte_lengths
    from router_pipelines.data.torch_dataset import TokenBlockDataset
    from router_pipelines.evaluation import evaluate_language_model
    from router_pipelines.families.memory import count_chapter_picks, utilisation

    params = parse_memory_params({"evaluation": evaluation_params, "training": training_params})
    config = params.evaluation
    batch_size = config.batch_size or params.training.eval_batch_size or params.training.batch_size
    token_bytes = token_byte_lengths(model.tokenizer)
    splits = {"text": validation_tokens, "chat": chat_validation_tokens}
    rows = []
    for name, lm in (("base", base_model.model), ("memory", model.model)):
        lm.eval()
        for split, tokens in splits.items():
            metrics = evaluate_language_model(
                lm,
                TokenBlockDataset(tokens),
                batch_size=batch_size,
                max_batches=config.max_batches,
                token_bytes=token_bytes,
            )
            rows.append({"model": name, "split": split, **metrics})
    frame = pd.DataFrame(rows)
    value = frame.set_index(["model", "split"])
    loader = torch.utils.data.DataLoader(
        TokenBlockDataset(chat_validation_tokens), batch_size=batch_size
    )
    counts = count_chapter_picks(model.model, loader, config.max_batches)
    usage = utilisation(counts)
    headline = {
        "chat_validation_loss": float(value.loc[("memory", "chat"), "loss"]),
        "chat_bits_per_byte": float(value.loc[("memory", "chat"), "bits_per_byte"]),
        "base_chat_validation_loss": float(value.loc[("base", "chat"), "loss"]),
        "text_validation_loss": float(value.loc[("memory", "text"), "loss"]),
        "base_text_validation_loss": float(value.loc[("base", "text"), "loss"]),
        "forgetting": float(
            value.loc[("memory", "text"), "loss"] - value.loc[("base", "text"), "loss"]
        ),
        **usage,
        "chapter_counts": counts.tolist(),
    }
    return frame, headline, counts


def registered_metrics(
    evaluation_summary: dict[str, Any], trainable_parameters: int
) -> dict[str, float]:
    """The metrics :func:`register_memory` reports (:data:`REGISTERED_METRICS`): the headline
    of the evaluation and ``trainable_parameters``, what training updated (adapter + LoRA; the
    frozen base is shared by every version), the promotion's cost."""
    metrics = {key: float(evaluation_summary[key]) for key in HEADLINE}
    metrics["trainable_parameters"] = float(trainable_parameters)
    return metrics


def register_memory(
    model: Any,
    evaluation_summary: dict[str, Any],
    training_summary: dict[str, Any],
    register_params: dict[str, Any],
) -> dict[str, Any]:
    """Register a memory model trained in this run as ``memory_lm`` with its chat pyfunc."""
    config = parse_memory_params({"register": register_params}).register
    skipped = registration_skipped(config, training_summary)
    if skipped is not None:
        return skipped
    from router_pipelines.serving import register_model

    metrics = registered_metrics(
        evaluation_summary,
        training_summary["memory_parameters"] + training_summary["lora_parameters"],
    )
    tags = {
        FINGERPRINT_TAG: training_summary["fingerprint"],
        "memory_parameters": training_summary["memory_parameters"],
        "num_chapters": training_summary["num_chapters"],
    }  # register_model adds the headline metrics as tags too
    info = register_model(
        model,
        config.name,
        wrapper=FAMILY,
        tags=tags,
        description=config.description,
        metrics=metrics,
        step=training_summary.get("global_step"),
    )
    return {"registered": True, **info, "metrics": metrics}
