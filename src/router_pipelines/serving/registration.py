"""Register a model bundle in the MLflow Model Registry: the one function every family calls."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from router_pipelines.config import check_non_empty_str
from router_pipelines.models.bundle import ModelBundle, save_bundle
from router_pipelines.serving.wrappers import PyfuncWrapper, wrapper_for

logger = logging.getLogger(__name__)

BUNDLE_ARTIFACT = "model"  # the artifact key of the bundle folder inside every logged model
TOKENIZER_ARTIFACT_PATH = "tokenizer"  # the tokenizer also goes to the run, on its own
# Pinned, not inferred: inference imports the model and may call pip (the network).
SERVING_REQUIREMENTS = ("torch", "transformers", "tokenizers", "safetensors")


def register_model(
    bundle: ModelBundle,
    name: str,
    *,
    wrapper: str | PyfuncWrapper | None = None,
    tags: Mapping[str, Any] | None = None,
    description: str | None = None,
    extra_artifacts: Mapping[str, str] | None = None,
    metrics: Mapping[str, float] | None = None,
    step: int | None = None,
    input_example: Any = None,
) -> dict[str, Any]:
    """Log ``bundle`` as a pyfunc model (from code) in the active run; register a new version.

    Args:
        bundle: model and tokenizer; saved as the model's artifact ``model``.
        name: registered model name (``base_lm``, ``switchable_lm``, ...).
        wrapper: the pyfunc wrapper (a name in ``serving.WRAPPERS``); default: the one named
            after the bundle's family.
        tags: set on the new version (values turned into strings); ``family`` is always set.
        description: set on the new version.
        extra_artifacts: more files or folders shipped inside the model (key -> local path).
        metrics: the model's headline metrics: logged to the run linked to this logged model
            (``model_id``, so the UI shows them on the model's page, not on another model
            logged in the same run) and set as version tags.
        step: the step the model is logged at (e.g. its training's last optimizer step).
            MLflow links every metric logged later in the run *at that step* to the model;
            the default 0 would catch every other node's step-0 metrics.
        input_example: an example input (e.g. ``["def add(a, b):"]``), saved with the model;
            MLflow loads the logged model and runs it once on the example to check it.

    Without ``description`` the version gets one made of its family, the run and ``metrics``;
    the registered model gets one the first time (what it is, where to read more).

    Returns:
        ``{"name", "version", "model_uri", "run_id", "model_id"}`` of the registered version.

    Raises:
        RuntimeError: no MLflow run is active (kedro-mlflow opens one per ``kedro run``).
        ValueError: a bad name, an unknown wrapper, a wrapper that does not serve the bundle's
            family, or an extra artifact that is missing or reuses the key ``model``.
    """
    import mlflow

    check_non_empty_str("name", name)
    chosen = wrapper_for(bundle.family if wrapper is None else wrapper)
    if bundle.family not in chosen.families:
        raise ValueError(
            f"wrapper: {chosen.name!r} serves {list(chosen.families)} models, but the bundle's "
            f"family is {bundle.family!r}"
        )
    extras = _checked_extra_artifacts(extra_artifacts)
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError(
            f"register_model({name!r}) needs an active MLflow run; run it inside `kedro run` "
            "(kedro-mlflow opens one) or `with mlflow.start_run():`"
        )
    model_step = 0 if step is None else int(step)
    with tempfile.TemporaryDirectory(prefix="register-") as tmp, _no_pip_check(), _quiet():
        model_dir = Path(tmp) / BUNDLE_ARTIFACT
        save_bundle(bundle, model_dir)
        tokenizer_dir = Path(tmp) / "tokenizer"
        bundle.tokenizer.save_pretrained(str(tokenizer_dir))
        mlflow.log_artifacts(str(tokenizer_dir), artifact_path=TOKENIZER_ARTIFACT_PATH)
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=str(chosen.code_path),  # a path: models from code, nothing pickled
            artifacts={BUNDLE_ARTIFACT: str(model_dir), **extras},
            signature=chosen.signature(),
            input_example=input_example,
            pip_requirements=pinned_requirements(SERVING_REQUIREMENTS),
            registered_model_name=name,
            step=model_step,
        )
    headline = {str(k): float(v) for k, v in (metrics or {}).items()}
    if headline:  # under the node's namespace, like every other metric of the run
        from router_pipelines.tracking import metric_prefix

        linked = {f"{metric_prefix()}{key}": value for key, value in headline.items()}
        mlflow.log_metrics(linked, step=model_step, model_id=info.model_id)
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    version_tags = {"family": bundle.family, **dict(tags or {}), **headline}
    for key, value in version_tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    client.update_model_version(
        name, version, description=description or default_description(bundle, run, headline)
    )
    if not client.get_registered_model(name).description:
        client.update_registered_model(
            name,
            description=f"router_pipelines {bundle.family} models, one version per trained "
            "model. Aliases: champion (serve this), challenger (the newest candidate); "
            "see docs/operations.md.",
        )
    logger.info("Registered %s version %s from run %s", name, version, run.info.run_id)
    return {
        "name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "run_id": run.info.run_id,
        "model_id": info.model_id,
    }


def default_description(bundle: ModelBundle, run: Any, metrics: Mapping[str, float]) -> str:
    """``causal_lm model trained in run 'pretrain · debug' (3f2a…); validation_perplexity=12.3``."""
    text = f"{bundle.family} model trained in run {run.info.run_name!r} ({run.info.run_id})"
    if metrics:
        text += "; " + ", ".join(f"{key}={value:.4g}" for key, value in metrics.items())
    return text


def pinned_requirements(packages: tuple[str, ...] | list[str]) -> list[str]:
    """``name==installed version`` for each package (the bare name when not installed)."""
    pins = []
    for package in packages:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def _checked_extra_artifacts(extra_artifacts: Mapping[str, str] | None) -> dict[str, str]:
    extras = {str(k): str(v) for k, v in (extra_artifacts or {}).items()}
    if BUNDLE_ARTIFACT in extras:
        raise ValueError(f"extra_artifacts: the key {BUNDLE_ARTIFACT!r} is the model's own folder")
    missing = {k: v for k, v in extras.items() if not Path(v).exists()}
    if missing:
        raise ValueError(f"extra_artifacts: no such file or folder: {missing}")
    return extras


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence two MLflow hints that do not apply: the signature is declared, not inferred from
    type hints or an input example (an example would load and run the model once more)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method")
        warnings.filterwarnings("ignore", message=".*An input example was not provided")
        yield


@contextlib.contextmanager
def _no_pip_check() -> Iterator[None]:
    """MLflow checks pinned requirements with ``pip install --dry-run`` (the network) unless
    ``MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK`` is set; set it for the call if the user has not."""
    key = "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK"
    if key in os.environ:
        yield
        return
    os.environ[key] = "true"
    try:
        yield
    finally:
        os.environ.pop(key, None)
