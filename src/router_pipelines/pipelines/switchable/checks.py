"""Pre-run checks of the ``switchable`` group against the base model (see validation.py).

What can be known before the base model exists is checked here: its depth and tied embedding
come from the ``pretrain`` preset (a weightless ``meta``-device copy), its context length
from ``pretrain.model``. A base model taken from the registry (``switchable.base.source:
registry``) is only known once loaded; the nodes check it then.
"""

from __future__ import annotations

from typing import Any

from router_pipelines.pipelines.pretrain.checks import model_positions
from router_pipelines.validation import (
    RunParameters,
    log_precision,
    path_problem,
    registry_problem,
)


def check_switchable(run: RunParameters) -> list[str]:
    params = run.parsed["switchable"]
    pretrain = run.parsed.get("pretrain")
    problems = [
        path_problem("switchable.training.output_dir", params.training.output_dir, must_be="folder")
    ]
    log_precision("switchable.training", params.training)
    if "switchable.base" in run.used_params:
        problems.append(registry_problem(run, "switchable.base", params.base, "base_lm"))
    base_known = pretrain is not None and not (
        "switchable.base" in run.used_params and params.base.source == "registry"
    )
    if base_known:
        problems.extend(_against_base(params, pretrain))
    return [problem for problem in problems if problem]


def _against_base(params: Any, pretrain: Any) -> list[str]:
    problems = []
    base = _meta_base_model(pretrain)
    if base is not None:
        from router_pipelines.models.layers import find_decoder_blocks
        from router_pipelines.pipelines.switchable.nodes import check_fits

        try:
            check_fits(base, params)
        except ValueError as err:
            problems.append(str(err))
        depth = len(find_decoder_blocks(base)[1])
        if params.model.n_layer is not None and params.model.n_layer > depth:
            problems.append(
                f"switchable.model.n_layer: {params.model.n_layer} exceeds the {depth} layers "
                "of the base model (pretrain.model)"
            )
        layers = params.model.n_layer or depth
        for name, entries in params.experiment.evaluation.layer_wise.items():
            if isinstance(entries, list) and len(entries) != layers:
                problems.append(
                    f"switchable.experiment.evaluation.layer_wise.{name}: {len(entries)} layer "
                    f"entries, but the switchable model has {layers} layers"
                )
    positions, what = model_positions(pretrain.model)
    speed = params.experiment.evaluation.speed
    for key in ("decode_tokens", "prefill_seq_len"):
        value = getattr(speed, key)
        if speed.enabled and positions is not None and value > positions:
            problems.append(
                f"switchable.experiment.evaluation.speed.{key}: {value} exceeds the {positions} "
                f"positions of the base model ({what})"
            )
    return problems


def _meta_base_model(pretrain: Any) -> Any:
    """The base model's architecture without weights (``meta`` device), for a preset; ``None``
    for a pretrained model (its layout is only known once loaded)."""
    if pretrain.model.name_or_path:
        return None
    import torch
    from transformers import AutoModelForCausalLM

    from router_pipelines.models.presets import transformers_config

    # The vocabulary size does not change the layout checked here.
    hf_config = transformers_config(pretrain.model, 512, {})
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(hf_config)
