"""Pre-run checks of the ``pretrain`` group against the data and the model (see validation.py)."""

from __future__ import annotations

from typing import Any

from router_pipelines.validation import (
    RunParameters,
    log_precision,
    path_problem,
    remote_code_problem,
)


def check_pretrain(run: RunParameters) -> list[str]:
    params = run.parsed["pretrain"]
    data = run.parsed.get("data")
    problems = [
        path_problem("pretrain.training.output_dir", params.training.output_dir, must_be="folder")
    ]
    positions, what = model_positions(params.model)
    if data is not None and positions is not None and data.seq_len > positions:
        problems.append(
            f"data.seq_len: {data.seq_len} exceeds the {positions} positions of the base model "
            f"({what}); lower data.seq_len or raise pretrain.model.max_positions"
        )
    model = params.model
    if (
        data is not None
        and model.name_or_path
        and data.tokenizer.name_or_path is None
        and not model.resize_token_embeddings
    ):
        problems.append(
            f"pretrain.model.name_or_path: {model.name_or_path!r} comes with its own tokenizer, "
            "but data.tokenizer.name_or_path is null (a new BPE would be trained, with other "
            "ids); set data.tokenizer.name_or_path to the same model, or "
            "pretrain.model.resize_token_embeddings: true to retrain it on the new vocabulary"
        )
    problems.append(
        remote_code_problem("pretrain.model", model.name_or_path, model.trust_remote_code)
    )
    log_precision("pretrain.training", params.training)
    return [problem for problem in problems if problem]


def model_positions(model_config: Any) -> tuple[int | None, str]:
    """The context length of the base model before it exists: the preset's ``max_positions``,
    or a pretrained model's config when it can be read offline (else ``None``)."""
    if not model_config.name_or_path:
        return model_config.max_positions, "pretrain.model.max_positions"
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            model_config.name_or_path,
            trust_remote_code=model_config.trust_remote_code,
            local_files_only=True,
        )
    except (OSError, ValueError):  # not available offline: the node checks it when it loads
        return None, model_config.name_or_path
    for name in ("max_position_embeddings", "n_positions"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value, f"{model_config.name_or_path} {name}"
    return None, model_config.name_or_path
