"""MLflow glue shared by the pipelines: live metric logging, figures and model registration.

kedro-mlflow opens one MLflow run per ``kedro run`` and logs parameters and catalog artifacts.
What a catalog dataset cannot do lives here: metrics logged *while* a node trains (so the MLflow
UI shows a live curve) and registering a model folder as a new version in the Model Registry.
Every function is a no-op or a clear error when no run is active, so library code and unit tests
run without MLflow.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow

from router_pipelines.models.bundle import ModelBundle, load_bundle, save_bundle

logger = logging.getLogger(__name__)

# Model logging must never reach for the network to infer requirements (offline machines).
os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log ``metrics`` to the active MLflow run; nothing when no run is active."""
    if mlflow.active_run() is not None and metrics:
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def metric_logger(prefix: str = "") -> Callable[[Mapping[str, float], int], None]:
    """A ``log_fn(metrics, step)`` for the training engine that logs to the active MLflow run."""

    def log(metrics: Mapping[str, float], step: int) -> None:
        log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step)

    return log


def _pinned(packages: list[str]) -> list[str]:
    pins = []
    for name in packages:
        try:
            pins.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pins.append(name)
    return pins


class CausalLMModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a saved :class:`ModelBundle`: text in, greedy continuation out.

    ``mlflow.pyfunc.load_model("models:/base_lm/latest").predict(["The json module"])``; the
    ``max_new_tokens`` param (default 32) bounds the continuation, and ``bits`` ("2".."8" or
    "fp", default) sets a switchable model's precision. The underlying model is reachable as
    ``loaded.unwrap_python_model().bundle``.
    """

    def load_context(self, context: Any) -> None:
        self.bundle = load_bundle(Path(context.artifacts["model"]))
        self.bundle.model.eval()

    def predict(self, context, model_input, params=None):  # no hints: MLflow would validate them
        import torch

        if hasattr(model_input, "columns"):  # pyfunc hands lists over as a one-column DataFrame
            column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
            prompts = [str(p) for p in model_input[column]]
        else:
            prompts = [str(p) for p in model_input]
        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens", 32))
        tokenizer, model = self.bundle.tokenizer, self.bundle.model
        if hasattr(model, "set_precision"):  # a switchable model: run at the asked width
            bits = str(params.get("bits", "fp"))
            model.set_precision(None if bits == "fp" else int(bits))
        context_length = getattr(model.config, "max_position_embeddings", None)
        generate = getattr(model, "generate", None) or model.model.generate
        outputs = []
        with torch.inference_mode():
            for prompt in prompts:
                ids = tokenizer(prompt, return_tensors="pt")
                room = max_new_tokens
                if context_length:  # never run past the position embeddings
                    ids = {k: v[:, -(context_length - 1) :] for k, v in ids.items()}
                    room = max(0, min(room, context_length - ids["input_ids"].shape[1]))
                generated = generate(
                    **ids,
                    max_new_tokens=room,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
                new_tokens = generated[0, ids["input_ids"].shape[1] :]
                outputs.append(tokenizer.decode(new_tokens, skip_special_tokens=True))
        return outputs


def register_bundle(
    bundle: ModelBundle,
    registered_name: str,
    tags: Mapping[str, Any] | None = None,
    extra_artifacts: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Log ``bundle`` as a pyfunc model in the active run and register a new version.

    Args:
        bundle: model and tokenizer to register.
        registered_name: Model Registry name (``base_lm``, ``switchable_lm``, ...).
        tags: set on the new model version (values turned into strings).
        extra_artifacts: more files to ship inside the model (name -> local path).

    Returns:
        ``{"name", "version", "model_uri", "run_id"}`` of the registered version.

    Raises:
        RuntimeError: when no MLflow run is active (kedro-mlflow opens one per ``kedro run``).
    """
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(
            f"register_bundle({registered_name!r}) needs an active MLflow run; "
            "run it inside `kedro run` (kedro-mlflow) or `with mlflow.start_run():`"
        )
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        model_dir = Path(tmp) / "model"
        save_bundle(bundle, model_dir)
        # The tokenizer also goes to the run on its own, so it can be fetched without the model.
        tokenizer_dir = Path(tmp) / "tokenizer"
        bundle.tokenizer.save_pretrained(str(tokenizer_dir))
        mlflow.log_artifacts(str(tokenizer_dir), artifact_path="tokenizer")
        artifacts = {"model": str(model_dir), **dict(extra_artifacts or {})}
        info = mlflow.pyfunc.log_model(
            name=registered_name,
            python_model=CausalLMModel(),
            artifacts=artifacts,
            registered_model_name=registered_name,
            pip_requirements=_pinned(["torch", "transformers", "tokenizers", "safetensors"]),
            signature=mlflow.models.infer_signature(
                ["a prompt"], ["a continuation"], params={"max_new_tokens": 32, "bits": "fp"}
            ),
        )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    for key, value in (tags or {}).items():
        client.set_model_version_tag(registered_name, version, key, str(value))
    logger.info("Registered %s version %s from run %s", registered_name, version, run.info.run_id)
    return {
        "name": registered_name,
        "version": version,
        "model_uri": f"models:/{registered_name}/{version}",
        "run_id": run.info.run_id,
    }


def loss_curve_figure(history: Mapping[str, list[tuple[int, float]]], title: str):
    """A matplotlib figure of train and eval loss (and lr on a twin axis) against step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for key, label in (("train_loss", "train loss"), ("eval_loss", "eval loss")):
        points = history.get(key, [])
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, label=label, marker="." if key == "eval_loss" else None)
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if history.get("lr"):
        lr_axis = axis.twinx()
        steps, values = zip(*history["lr"], strict=True)
        lr_axis.plot(steps, values, color="grey", alpha=0.4, linewidth=1, label="lr")
        lr_axis.set_ylabel("learning rate")
    axis.legend(loc="upper right")
    figure.tight_layout()
    return figure


def log_figure(figure: Any, name: str, metrics: Mapping[str, float] | None = None) -> None:
    """Log ``figure`` (and optional scalar metrics) to the active MLflow run, if any."""
    if mlflow.active_run() is None:
        return
    mlflow.log_figure(figure, name)
    log_metrics(metrics or {})
