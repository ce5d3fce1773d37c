"""What ``kedro run`` prints: library noise filtered, log lines through the progress bar, a start
banner and an end summary.

* :func:`quiet_library_noise` (called first thing in ``settings.py``) filters the warnings that
  are noise for this project, each with its reason in :data:`NOISE` (docs/operations.md lists
  them), and switches off the download bars that libraries draw over the training bar. Real
  flaws are fixed where they come from instead (e.g. the special-token ids of the presets).
* :class:`RunReport` (a hook) prints, once MLflow's run is open, what runs where: pipeline,
  environment, the main parameters of each family, device and precision, where outputs land;
  and at the end one table of the models registered (version, alias, headline metrics) and how
  to open the run in the MLflow UI. While the pipeline runs, Kedro's rich log lines are
  written through tqdm (:func:`route_logs_through_progress_bars`), so a log line appears above
  the training bar instead of breaking it.
"""

from __future__ import annotations

import logging
import os
import sys
import textwrap
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kedro.framework.hooks import hook_impl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Noise:
    """A library warning (``message`` regex) or logger (``logger`` name) this project silences."""

    reason: str
    message: str | None = None
    category: type[Warning] = UserWarning
    logger: str | None = None  # a logger raised to ERROR instead of a warning filter


NOISE: tuple[Noise, ...] = (
    Noise(
        "omegaconf 2.4 deprecates it; Kedro 1.7 and kedro-mlflow 2.0 still call it (five times a "
        "run). Nothing in this project calls it; it goes away when they update.",
        message=r"register_new_resolver\(\) is deprecated",
    ),
    Noise(
        "MLflow asks for type hints on PythonModel.predict to infer a signature; the project's "
        "wrappers declare their signature explicitly (serving/*.py) on purpose.",
        message=r".*Add type hints to the `predict` method",
    ),
    Noise(
        "Kedro 1.7's parameter validator reads every node's type hints; the nodes keep heavy "
        "types behind TYPE_CHECKING (imports stay lazy) and partial() nodes have none. The "
        "project validates its parameters itself (validation.py) before any node runs.",
        logger="kedro.validation.type_extractor",
    ),
    Noise(
        "Kedro warns when a versioned dataset's load version differs from the version it was "
        "saved at. The project's model and tokenizer datasets do that on purpose: a model "
        "reused unchanged (or a tokenizer identical to the newest) is not written again, and "
        "the dataset adopts the existing version so later nodes read exactly it "
        "(datasets/pretrained.py). Only warnings about these datasets are dropped.",
        message=r"Save version '[^']*' did not match load version '[^']*' for "
        r"router_pipelines\.datasets\.",
    ),
)

# Progress bars of downloads and artifact copies drawn next to the training bar; the project
# works offline, and MLflow's artifact bar appears on every registration. A value the user set
# is kept.
QUIET_SWITCHES = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" bars follow it
}


def quiet_library_noise() -> None:
    """Install the filters of :data:`NOISE` and the switches of :data:`QUIET_SWITCHES`."""
    for name, value in QUIET_SWITCHES.items():
        os.environ.setdefault(name, value)
    # MLflow wraps some calls in `catch_warnings(); simplefilter("once", UserWarning)`, which
    # shadows the warning filters; Kedro routes warnings to logging (logging.captureWarnings),
    # so the same messages are also dropped where they become log records (_DropNoise).
    captured = logging.getLogger("py.warnings")
    if not any(isinstance(f, _DropNoise) for f in captured.filters):
        captured.addFilter(_DropNoise())
    for noise in NOISE:
        if noise.message is not None:
            warnings.filterwarnings("ignore", message=noise.message, category=noise.category)
        if noise.logger is not None:
            # A filter, not a level: Kedro's logging.config.dictConfig resets the levels of
            # the "kedro.*" child loggers it configures, but keeps their filters.
            target = logging.getLogger(noise.logger)
            if not any(isinstance(f, _ErrorsOnly) for f in target.filters):
                target.addFilter(_ErrorsOnly())


class _DropNoise(logging.Filter):
    """Drops a captured warning whose text matches a :data:`NOISE` message."""

    def __init__(self) -> None:
        super().__init__()
        import re

        self._patterns = [re.compile(n.message) for n in NOISE if n.message is not None]

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(pattern.search(text) for pattern in self._patterns)


class _ErrorsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


class _ThroughTqdm:
    """A file for rich's console that writes with ``tqdm.write`` (bars cleared, then redrawn)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        from tqdm import tqdm

        tqdm.write(text, file=self._stream, end="")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding: the real stream's
        return getattr(self._stream, name)


def route_logs_through_progress_bars() -> list[tuple[Any, Any]]:
    """Point every rich log handler's console at :class:`_ThroughTqdm`.

    Returns:
        ``(console, original file)`` pairs, for :func:`restore_log_streams`.
    """
    changed = []
    for handler in logging.getLogger().handlers:
        console = getattr(handler, "console", None)
        if console is None or isinstance(console.file, _ThroughTqdm):
            continue
        original = console.file
        console.file = _ThroughTqdm(original)
        changed.append((console, original))
    return changed


def restore_log_streams(changed: list[tuple[Any, Any]]) -> None:
    for console, original in changed:
        console.file = original


# Parameters shown at the start when a family has them (the key below its namespace).
MAIN_PARAMETERS = (
    "model.preset",
    "model.architecture",
    "model.name_or_path",
    "model.bit_widths",
    "training.switch_strategy",
    "training.max_steps",
    "training.batch_size",
    "training.learning_rate",
)


def main_parameters(parameters: Mapping[str, Any], namespace: str) -> dict[str, Any]:
    """The :data:`MAIN_PARAMETERS` that ``parameters[namespace]`` sets (not null)."""
    from router_pipelines.config import flatten_settings

    flat = flatten_settings(parameters.get(namespace) or {})
    return {key: flat[key] for key in MAIN_PARAMETERS if flat.get(key) is not None}


def device_and_precision(parameters: Mapping[str, Any], namespaces: list[str]) -> str:
    """``cpu, fp32`` / ``cuda (NVIDIA H200), bf16``: where training runs and in which precision
    (``mixed_precision: auto`` resolved as the engine does: bf16 on CUDA, fp32 elsewhere)."""
    import torch

    if torch.cuda.is_available():
        device = f"cuda ({torch.cuda.get_device_name(0)})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = "cpu"
    precisions = set()
    for namespace in namespaces:
        chosen = ((parameters.get(namespace) or {}).get("training") or {}).get("mixed_precision")
        if chosen is None:
            continue
        if chosen == "auto":
            chosen = "bf16" if device.startswith("cuda") else "fp32"
        precisions.add("fp32" if chosen == "no" else chosen)
    return f"{device}, {'/'.join(sorted(precisions)) or 'fp32'}"


def user_namespaces(pipeline: Any) -> list[str]:
    """The top-level namespaces of ``pipeline``'s nodes, in the order they finish (their last
    node in run order): data, base, switchable, then the routers on it. By first node, a
    family whose first step needs only the data (the query router cuts its queries from the
    validation split) would be listed before the model it routes."""
    last: dict[str, int] = {}
    for index, node in enumerate(pipeline.nodes):
        top = (node.namespace or "").split(".")[0]
        if top:
            last[top] = index
    return sorted(last, key=last.__getitem__)


class RunReport:
    """The start banner and the end summary of a ``kedro run`` (see the module docstring)."""

    def __init__(self) -> None:
        self._results: dict[str, dict[str, Any]] = {}
        self._streams: list[tuple[Any, Any]] = []
        self._paths: dict[str, Any] = {}
        self._run: tuple[str, str] | None = None  # experiment id, run id

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        try:
            self._paths = dict((context.config_loader["globals"] or {}).get("paths") or {})
        except Exception:  # no globals: the banner just says less
            self._paths = {}

    @hook_impl(trylast=True)  # after kedro-mlflow opened the run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        from router_pipelines.hooks import is_main_process

        self._results = {}
        if not is_main_process():
            return
        try:
            parameters = catalog.load("parameters")
        except Exception:
            parameters = {}
        self._run = _active_run()
        print_banner(run_params, pipeline, parameters, self._paths, self._run)
        self._streams = route_logs_through_progress_bars()

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        for name, value in outputs.items():
            kind = name.rsplit(".", 1)[-1]
            if kind in ("registration", "promotion") and isinstance(value, Mapping):
                self._results.setdefault(name.rsplit(".", 1)[0], {})[kind] = dict(value)

    @hook_impl(tryfirst=True)
    def after_pipeline_run(self) -> None:
        restore_log_streams(self._streams)
        self._streams = []
        from router_pipelines.hooks import is_main_process

        if is_main_process():
            print_summary(self._results, self._run)

    @hook_impl
    def on_pipeline_error(self) -> None:
        restore_log_streams(self._streams)
        self._streams = []


def _active_run() -> tuple[str, str] | None:
    if "mlflow" not in sys.modules:
        return None
    run = sys.modules["mlflow"].active_run()
    return None if run is None else (run.info.experiment_id, run.info.run_id)


def _console() -> Any:
    from rich.console import Console

    # Rich assumes 80 columns when not on a terminal (CI logs, `| tee`): tables are cut there.
    return Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def print_banner(
    run_params: Mapping[str, Any],
    pipeline: Any,
    parameters: Mapping[str, Any],
    paths: Mapping[str, Any],
    run: tuple[str, str] | None,
) -> None:
    """What runs, on what, and where its outputs land (printed once, before the first node)."""
    from rich.table import Table

    namespaces = user_namespaces(pipeline)
    names = run_params.get("pipeline_names") or [run_params.get("pipeline_name") or "__default__"]
    table = Table(show_header=False, box=None, padding=(0, 1))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("pipeline", f"{'+'.join(names)}  ({len(pipeline.nodes)} nodes)")
    table.add_row("env", str(run_params.get("env") or "local"))
    table.add_row("device", device_and_precision(parameters, namespaces))
    for namespace in namespaces:
        shown = main_parameters(parameters, namespace)
        if shown:
            table.add_row(namespace, ", ".join(f"{k}={v}" for k, v in shown.items()))
    for key in ("models", "reports"):
        if paths.get(key):
            table.add_row(key, str(paths[key]))
    if run is not None:
        import mlflow

        table.add_row("mlflow", f"{mlflow.get_tracking_uri()}  experiment {run[0]}, run {run[1]}")
    _console().print(table)


# The MLflow UI (3.17) opens every experiment in its GenAI mode (traces, token usage) unless
# told otherwise: its mode is a switch of the UI, remembered by the browser, that this URL
# parameter sets; the experiment's ``mlflow.experimentKind`` tag is not what it reads.
UI_TRAINING_MODE = "?workflowType=machine_learning"


def print_summary(results: Mapping[str, Mapping[str, Any]], run: tuple[str, str] | None) -> None:
    """One row per registration (model, version, alias, headline metrics), then where to look."""
    from rich.table import Table

    table = Table(title="models", title_justify="left")
    for column in ("family", "model", "version", "alias", "headline metrics"):
        table.add_column(column)
    for namespace, result in results.items():
        registration = result.get("registration") or {}
        promotion = result.get("promotion") or {}
        if registration.get("registered"):
            metrics = registration.get("metrics") or {}
            shown = ", ".join(f"{k}={v:.4g}" for k, v in list(metrics.items())[:4])
            alias = promotion.get("alias") or "-"
            if promotion and not promotion.get("promoted") and promotion.get("reason"):
                # cut at a word boundary: the whole reason is in promotion.json and the tag
                alias += f" ({textwrap.shorten(promotion['reason'], 60, placeholder=' …')})"
            table.add_row(
                namespace,
                str(registration.get("name")),
                str(registration.get("version")),
                alias,
                shown,
            )
            for companion in promotion.get("companions") or []:  # routed_lm follows its router
                table.add_row(
                    namespace,
                    str(companion.get("name")),
                    str(companion.get("version")),
                    f"{companion.get('alias') or '-'} (with {registration.get('name')})",
                    "-",
                )
        else:
            reason = registration.get("reason", "not registered")
            table.add_row(
                namespace, "-", "-", "-", textwrap.shorten(str(reason), 80, placeholder=" …")
            )
    console = _console()
    if results:
        console.print(table)
    if run is not None:
        console.print(
            f"Open the run: [bold]make mlflow-ui[/bold], then "
            f"http://127.0.0.1:5000/#/experiments/{run[0]}/runs/{run[1]}{UI_TRAINING_MODE}",
            soft_wrap=True,  # no line break inside the link: it stays one clickable URL
        )
