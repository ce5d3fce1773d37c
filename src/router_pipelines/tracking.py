"""MLflow glue shared by the pipelines: live metrics under each family's prefix, and figures.

kedro-mlflow opens one MLflow run per ``kedro run`` and logs parameters and catalog artifacts.
What a catalog dataset cannot do lives here: metrics logged *while* a node trains, so the MLflow
UI shows a live curve. Several trainings share that one run (the default DAG trains the base
model and then the switchable model), so every metric is logged under the namespace of the node
that logs it: ``pretrain/train_loss``, ``switchable/train_loss``,
``switchable/eval/uniform_2bit/perplexity``. The project's :class:`MetricNamespace` hook sets
that namespace around each node; nodes never spell it out. Model registration lives in
:mod:`router_pipelines.serving`.

Every function is a no-op when no run is active, so library code and unit tests run without
MLflow. ``mlflow`` is imported on first use: importing this module costs nothing at start-up.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # matplotlib costs half a second: imported by the nodes that draw
    from matplotlib.figure import Figure

# The namespace of the node now running ("" outside a namespaced node); see MetricNamespace.
_namespace: contextvars.ContextVar[str] = contextvars.ContextVar("metric_namespace", default="")


def metric_prefix() -> str:
    """``"<namespace>/"`` for the node now running (``"a/b/"`` for ``a.b``), or ``""``."""
    namespace = _namespace.get()
    return f"{namespace.replace('.', '/')}/" if namespace else ""


@contextlib.contextmanager
def metric_namespace(namespace: str | None) -> Iterator[None]:
    """Log every metric inside the block under ``namespace`` (e.g. a node's namespace)."""
    token = _namespace.set(namespace or "")
    try:
        yield
    finally:
        _namespace.reset(token)


def set_metric_namespace(namespace: str | None) -> contextvars.Token:
    """Set the namespace until :func:`reset_metric_namespace` (for hooks split in two calls)."""
    return _namespace.set(namespace or "")


def reset_metric_namespace(token: contextvars.Token) -> None:
    _namespace.reset(token)


def log_metrics(metrics: Mapping[str, float], step: int | None = None) -> None:
    """Log ``metrics`` to the active MLflow run under the current namespace; nothing without a run."""
    if not metrics:
        return
    import mlflow

    if mlflow.active_run() is None:
        return
    from mlflow.entities import Metric
    from mlflow.utils.time import get_current_time_millis

    prefix = metric_prefix()
    now = get_current_time_millis()
    entries = [Metric(f"{prefix}{k}", float(v), now, step or 0) for k, v in metrics.items()]
    # The client's log_batch, not mlflow.log_metrics: the fluent call links a metric to every
    # model the run logged at the same step (MLflow 3), so in a default run a router's loss at
    # step 30 showed on the page of the base model registered at step 30. Only registration
    # links metrics to a model (serving/registration.py, with its model_id).
    mlflow.MlflowClient().log_batch(mlflow.active_run().info.run_id, metrics=entries)


def metric_logger(prefix: str = "") -> Callable[[Mapping[str, float], int], None]:
    """A ``log_fn(metrics, step)`` for the training engine; ``prefix`` goes after the namespace.

    The namespace is read when the logger is made (inside the node), so a logger handed to
    a callback that runs later still logs under the node's namespace.
    """
    namespace = _namespace.get()

    def log(metrics: Mapping[str, float], step: int) -> None:
        with metric_namespace(namespace):
            log_metrics({f"{prefix}{k}": v for k, v in metrics.items()}, step=step)

    return log


def loss_curve_figure(history: Mapping[str, list[tuple[int, float]]], title: str) -> Figure:
    """Train and eval loss against the optimizer step, the learning rate in a panel below.

    A family whose ``train_loss`` is a sum over several losses of the same kind (the joint
    switchable loss sums one per width) also logs ``train_loss_per_width``, its mean: that is
    drawn instead, so the train and eval curves share one scale. An eval run at one fixed bit
    width (``eval_bits``) says so in its label.

    A bare ``Figure`` (matplotlib's object API): it renders with Agg, is not registered with
    pyplot, and is freed with its last reference; the catalog's plot dataset saves it.
    """
    from matplotlib.figure import Figure

    has_lr = bool(history.get("lr"))
    figure = Figure(figsize=(7, 5 if has_lr else 4), layout="constrained")
    if has_lr:
        axis, lr_axis = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        axis, lr_axis = figure.subplots(), None
    train_key, train_label = "train_loss", "train loss"
    if history.get("train_loss_per_width"):
        train_key, train_label = "train_loss_per_width", "train loss (mean over widths)"
    eval_label = "eval loss"
    eval_bits = {value for _, value in history.get("eval_bits", [])}
    if len(eval_bits) == 1:
        eval_label += f" (at {next(iter(eval_bits)):g} bits)"
    for key, label, style in (
        (train_key, train_label, {}),
        ("eval_loss", eval_label, {"marker": "o", "markersize": 4}),
    ):
        points = history.get(key, [])
        if points:
            steps, values = zip(*points, strict=True)
            axis.plot(steps, values, label=label, **style)
    axis.set_ylabel("loss (nats per token)")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if axis.lines:
        axis.legend(loc="best")
    bottom = axis
    if lr_axis is not None:
        steps, values = zip(*history["lr"], strict=True)
        lr_axis.plot(steps, values, color="0.4", linewidth=1)
        lr_axis.set_ylabel("learning rate")
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        lr_axis.grid(alpha=0.3)
        bottom = lr_axis
    bottom.set_xlabel("optimizer step")
    return figure


def log_figure(figure: Any, name: str, metrics: Mapping[str, float] | None = None) -> None:
    """Log ``figure`` (under the namespace's folder) and optional metrics to the active run."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_figure(figure, f"{metric_prefix()}{name}")
    log_metrics(metrics or {})


def log_table(table: Any, name: str) -> None:
    """Log a DataFrame as an MLflow table (``<namespace>/<name>``, a ``.json`` file that the UI
    shows as a table and the notebook reads back); nothing without a run."""
    import mlflow

    if mlflow.active_run() is None:
        return
    mlflow.log_table(data=table, artifact_file=f"{metric_prefix()}{name}")


def raw_data_fingerprint(data_params: Mapping[str, Any] | None, root: Any = None) -> str:
    """``sha256:<16 hex>`` of the raw corpus file (``data.raw_path``), or ``hub:<id>/<subset>/
    <split>`` for a hub data set; ``""`` when neither is known. What a freshness check and a
    run comparison need: the same data gives the same string."""
    import hashlib
    from pathlib import Path

    data = dict(data_params or {})
    if data.get("hub_dataset"):
        parts = [data.get("hub_dataset"), data.get("hub_subset"), data.get("hub_split")]
        return "hub:" + "/".join(str(p) for p in parts if p)
    raw = data.get("raw_path")
    if not raw:
        return ""
    path = Path(raw) if Path(raw).is_absolute() or root is None else Path(root) / raw
    if not path.is_file():
        return ""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def data_sets_fingerprint(parameters: Mapping[str, Any] | None, root: Any = None) -> str:
    """``sha256:<16 hex>`` over every raw data set the parameters name: each group shaped like
    ``data`` (a mapping with ``raw_path`` or ``hub_dataset``, at any depth: ``data``,
    ``memory.chat_data``, a future family's own corpus), by its dotted name and
    :func:`raw_data_fingerprint`. ``data_fingerprint`` is the main corpus alone; this one sees
    a change to any corpus a family trains on, so a freshness check does too."""
    import hashlib

    found: list[str] = []

    def walk(value: Any, name: str) -> None:
        if not isinstance(value, Mapping):
            return
        if "raw_path" in value or "hub_dataset" in value:
            found.append(f"{name}={raw_data_fingerprint(value, root)}")
        for key, item in value.items():
            walk(item, f"{name}.{key}" if name else str(key))

    walk(parameters or {}, "")
    text = "\n".join(sorted(found))
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def catalog_fingerprint(catalog_config: Mapping[str, Any] | None) -> str:
    """``sha256:<16 hex>`` of the environment's catalog configuration as Kedro resolved it
    (``config_loader["catalog"]``: globals and factories' patterns in place; credentials are a
    separate key and never part of it); ``""`` when it could not be read."""
    import hashlib
    import json

    if catalog_config is None:
        return ""
    text = json.dumps(catalog_config, sort_keys=True, default=str)
    return f"sha256:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def git_commit(root: Any = None) -> str:
    """The checkout's commit (``+dirty`` with uncommitted changes), or ``""`` outside git."""
    import subprocess

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5
        )
        if commit.returncode != 0:
            return ""
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def kedro_command(run_params: Mapping[str, Any], env: str | None) -> str:
    """The ``kedro run`` command line that reproduces the run (``--env``, ``--params`` too)."""
    from router_pipelines.config import flatten_settings

    parts = ["kedro run"]
    if env and env != "local":
        parts.append(f"--env={env}")
    names = run_params.get("pipeline_names") or (
        [run_params["pipeline_name"]] if run_params.get("pipeline_name") else []
    )
    if names:
        parts.append(f"--pipelines={','.join(names)}")
    for option, key in (
        ("--tags", "tags"),
        ("--nodes", "node_names"),
        ("--from-nodes", "from_nodes"),
        ("--to-nodes", "to_nodes"),
        ("--from-inputs", "from_inputs"),
        ("--to-outputs", "to_outputs"),
    ):
        values = run_params.get(key)
        if values:
            parts.append(f"{option}={','.join(values)}")
    runtime = run_params.get("runtime_params") or {}
    if runtime:
        flat = flatten_settings(runtime)
        parts.append("--params=" + ",".join(f"{k}={v}" for k, v in flat.items()))
    return " ".join(parts)
