"""Pre-run checks of the ``memory`` group (see validation.py).

Before any node runs: the memory layers and heads against the base model (a weightless
``meta``-device copy of the ``pretrain`` preset), the chat sequence length against its
positions, and every record of a local chat corpus (an unknown role, a chat without an assistant
turn or a missing ``text_field`` is named with its file and line). A base from the registry or
the hub is only known once loaded; the nodes check it then.
"""

from __future__ import annotations

from typing import Any

from router_pipelines.pipelines.pretrain.checks import model_positions
from router_pipelines.promotion import rule_problem
from router_pipelines.validation import (
    RunParameters,
    log_precision,
    path_problem,
    registry_problem,
)


def check_memory(run: RunParameters) -> list[str]:
    params = run.parsed["memory"]
    pretrain = run.parsed.get("pretrain")
    training = params.training
    problems = [
        path_problem("memory.training.output_dir", training.output_dir, must_be="folder"),
        path_problem("memory.chat_data.cache_dir", params.chat_data.cache_dir, must_be="folder"),
    ]
    log_precision("memory.training", training)
    if "memory.base" in run.used_params:
        problems.append(registry_problem(run, "memory.base", params.base, "base_lm"))
    if training.distributed_strategy == "fsdp" and training.save_only_trainable:
        problems.append(
            "memory.training.save_only_trainable: true is not available under "
            "distributed_strategy fsdp (FSDP writes its own sharded state); set it to false"
        )
    base_known = pretrain is not None and not (
        "memory.base" in run.used_params and params.base.source in ("registry", "pretrained")
    )
    if base_known:
        problems.extend(_against_base(params, pretrain))
    problems.extend(_chat_records(params.chat_data))
    from router_pipelines.pipelines.memory.nodes import REGISTERED_METRICS

    problems.append(rule_problem(run, "memory", REGISTERED_METRICS, "register_memory"))
    return [problem for problem in problems if problem]


def _against_base(params: Any, pretrain: Any) -> list[str]:
    from router_pipelines.pipelines.switchable.checks import _meta_base_model

    problems = []
    base = _meta_base_model(pretrain)
    if base is not None:
        from router_pipelines.models.layers import find_decoder_blocks

        depth = len(find_decoder_blocks(base)[1])
        try:
            params.adapter.resolve_layers(depth)
        except ValueError as err:
            problems.append(f"memory.adapter.{err} (pretrain.model)")
        hidden = int(base.config.get_text_config().hidden_size)
        if hidden % params.adapter.num_heads:
            problems.append(
                f"memory.adapter.num_heads: {params.adapter.num_heads} does not divide the base "
                f"model's hidden size {hidden} (pretrain.model)"
            )
    positions, what = model_positions(pretrain.model)
    if positions is not None and params.chat_data.seq_len > positions:
        problems.append(
            f"memory.chat_data.seq_len: {params.chat_data.seq_len} exceeds the {positions} "
            f"positions of the base model ({what})"
        )
    return problems


def _chat_records(chat_data: Any) -> list[str]:
    """Validate a local chat corpus now (the same pass as the ingest node, ~0.1 s per MB)."""
    if chat_data.hub_dataset:
        return []
    problem = path_problem("memory.chat_data.raw_path", chat_data.raw_path, must_be="file")
    if problem:
        return [problem]
    from router_pipelines.data.sources import scan_corpus

    missing = _missing_text_field(chat_data)
    if missing:
        return [missing]
    try:
        scan_corpus(chat_data.raw_path, chat_data)
    except FileNotFoundError as err:
        return [f"memory.chat_data.raw_path: {err}"]
    except ValueError as err:  # DataValidationError names the file, line and field
        message = str(err).replace("data.on_invalid", "memory.chat_data.on_invalid")
        return [f"memory.chat_data: {message}"]
    return []


AUTO_DETECTED = {"text", "messages", "conversations", "prompt", "response"}


def _missing_text_field(chat_data: Any) -> str | None:
    """A single custom ``text_field`` absent from the first JSONL record (the data layer would
    otherwise fall back to a ``messages`` / ``conversations`` field it finds)."""
    import json
    from pathlib import Path

    field = chat_data.text_field
    path = Path(chat_data.raw_path)
    if not isinstance(field, str) or field in AUTO_DETECTED or path.suffix != ".jsonl":
        return None
    with path.open(encoding="utf-8") as handle:
        first = next((line for line in handle if line.strip()), None)
    try:
        record = json.loads(first) if first else None
    except json.JSONDecodeError:
        return None  # the scan names the line
    if isinstance(record, dict) and field not in record:
        return (
            f"memory.chat_data.text_field: {field!r} is not a field of {path} (line 1 has "
            f"{sorted(record)})"
        )
    return None
