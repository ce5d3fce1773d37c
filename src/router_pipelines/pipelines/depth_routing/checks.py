"""Pre-run checks of the ``depth_routing`` group against the model it will build and the data
(see validation.py): every problem named before any node runs."""

from __future__ import annotations

from typing import Any

from router_pipelines.pipelines.depth_routing.config import HEADLINE_METRICS
from router_pipelines.promotion import rule_problem
from router_pipelines.validation import (
    RunParameters,
    log_precision,
    path_problem,
    registry_problem,
    remote_code_problem,
)

SUPPORTED_MODEL_TYPES = ("qwen2", "llama", "mistral")  # transformers config.model_type


def model_types(run: RunParameters) -> list[str]:
    """The model types the run trains: fixed by a ``mod`` / ``dtf`` pipeline's node name,
    else ``depth_routing.model_type``."""
    names = {node.name.rsplit(".", 1)[-1] for node in run.pipeline.nodes}
    fixed = [kind for kind in ("mod", "dtf") if f"train_{kind}_model" in names]
    return fixed or [run.parsed["depth_routing"].model_type]


def check_depth_routing(run: RunParameters) -> list[str]:
    params = run.parsed["depth_routing"]
    model = params.model
    problems = [
        path_problem(
            "depth_routing.training.output_dir", params.training.output_dir, must_be="folder"
        ),
        remote_code_problem("depth_routing.model", model.name_or_path, model.trust_remote_code),
    ]
    layers, positions, problem = _base_shape(model)
    problems.append(problem)
    for kind in model_types(run):
        if layers is None:
            break
        routing = model.routing(kind)
        try:
            if kind == "mod":
                routing.layers_to_route(layers)
            else:
                routing.dtf_pairs(layers)
        except ValueError as err:
            key = "routed_layers" if kind == "mod" else "model"
            problems.append(
                f"depth_routing.{'model.' if key == 'routed_layers' else ''}{err} ({kind})"
            )
    data = run.parsed.get("data")
    if data is not None and positions is not None and data.seq_len > positions:
        problems.append(
            f"data.seq_len: {data.seq_len} exceeds the {positions} positions of the model; lower "
            "data.seq_len or raise depth_routing.model.max_positions"
        )
    if (
        data is not None
        and model.name_or_path
        and data.tokenizer.name_or_path is None
        and not model.resize_token_embeddings
    ):
        problems.append(
            f"depth_routing.model.name_or_path: {model.name_or_path!r} comes with its own "
            "tokenizer, but data.tokenizer.name_or_path is null (a new BPE would be trained, with "
            "other ids); set data.tokenizer.name_or_path to the same model"
        )
    for kind in model_types(run):
        problems.append(
            registry_problem(
                run, "depth_routing.source", params.source, params.register.names[kind]
            )
        )
    problems.append(
        rule_problem(run, "depth_routing", HEADLINE_METRICS, "the depth-routing registration")
    )
    log_precision("depth_routing.training", params.training)
    return [p for p in problems if p]


def _base_shape(model: Any) -> tuple[int | None, int | None, str | None]:
    """(blocks, positions, problem) of the model before it exists."""
    from router_pipelines.models.presets import PRESETS

    if not model.name_or_path:
        if model.architecture not in ("llama", "qwen2"):
            return (
                None,
                None,
                (
                    f"depth_routing.model.architecture: {model.architecture!r} has no block token "
                    "routing supports; choose qwen2 or llama (rotary Llama / Qwen2 blocks)"
                ),
            )
        layers = model.overrides.get("num_hidden_layers", PRESETS[model.preset]["n_layer"])
        return layers, model.max_positions, None
    try:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(
            model.name_or_path, trust_remote_code=model.trust_remote_code, local_files_only=True
        )
    except (OSError, ValueError) as err:
        return (
            None,
            None,
            (
                f"depth_routing.model.name_or_path: {model.name_or_path!r} is not a local folder nor "
                f"in the local Hugging Face cache (nothing is downloaded at run time): {err}"
            ),
        )
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return (
            None,
            None,
            (
                f"depth_routing.model.name_or_path: {model.name_or_path!r} is a {config.model_type!r} "
                f"model; token routing supports {list(SUPPORTED_MODEL_TYPES)} blocks"
            ),
        )
    return config.num_hidden_layers, getattr(config, "max_position_embeddings", None), None
