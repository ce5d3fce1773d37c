"""Who writes what when a pipeline runs in several processes (``accelerate launch``).

Under ``accelerate launch -m router_pipelines.launch`` every process runs the whole Kedro
pipeline, so that the training nodes' ``Trainer`` can train with DDP across them. Only the
main process (global rank 0) may leave anything behind; the rule is enforced in three places,
each where Kedro and the plugins already have a switch for it:

1. **Plugin hooks** (``settings.py``): off the main process, kedro-mlflow, kedro-viz and
   kedro-telemetry are not registered (``DISABLE_HOOKS_FOR_PLUGINS``, from the rank that the
   launcher puts in the environment). So only rank 0 creates the experiment, opens THE MLflow run
   and logs parameters; the other ranks never touch the tracking store, which also avoids racing
   rank 0 on creating a fresh sqlite store.
2. **Catalog outputs** (:class:`MainProcessOnlyOutputs`): off the main process, every output of
   the pipeline that the catalog would persist (versioned model folders, JSON/PNG reports,
   ``MlflowArtifactDataset`` wrappers, anything not already a ``MemoryDataset``) is replaced by a
   ``MemoryDataset`` in ``before_pipeline_run``, the first hook that sees both the pipeline and
   the catalog. Downstream nodes get the same objects, only in memory; inputs that are only read
   (``latest_base_model``, the raw corpus) are left alone.
3. **Nodes with side effects of their own**: registering a model (``register_*`` nodes) returns
   ``{"registered": False, "reason": "not the main process"}`` off the main process; live metrics
   need nothing (the engine calls ``log_fn`` on the main process only, and
   ``tracking.metric_logger`` is a no-op without an active run); the token cache is built by the
   main process first while the others wait (:func:`main_process_first`), then read by them.

Why not one switch: a hook that skipped nodes would change the DAG each rank runs (every rank
must enter the training node for DDP), and disabling kedro-mlflow alone would leave the catalog
writing files (and ``MlflowArtifactDataset`` would start a run of its own to log into).

The rank comes from the environment (``RANK``, set by torchrun/``accelerate launch``, or the MPI
equivalents), because ``settings.py`` is read before anything initialises torch.distributed. In
one process (``kedro run``) there is no rank and nothing here changes anything.

Off the main process MLflow is never configured: a node that reads the registry there
(``switchable.base.source: registry``) uses MLflow's defaults (``MLFLOW_TRACKING_URI``, else
``sqlite:///mlflow.db`` in the working directory), which is what ``conf/base/mlflow.yml`` resolves
to unless it was changed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kedro.framework.hooks import hook_impl
from kedro.io import MemoryDataset

logger = logging.getLogger(__name__)

# Rank and world-size variables, in the order Accelerate reads them (torchrun first, then MPI).
_RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
_WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

# Plugins whose hooks write (MLflow runs and artifacts, Kedro-Viz run statistics under .viz/)
# or phone home. Kedro matches the distribution name as installed; kedro-mlflow's metadata
# spells it with an underscore, so both spellings are listed.
WRITING_PLUGINS = ("kedro-mlflow", "kedro_mlflow", "kedro-viz", "kedro_viz")

_MEMORY_DATASET = f"{MemoryDataset.__module__}.{MemoryDataset.__qualname__}"


def _first_int(names: tuple[str, ...], default: int) -> int:
    for name in names:
        value = os.environ.get(name)
        if value not in (None, ""):
            return int(value)
    return default


def process_rank() -> int:
    """Global rank of this process as the launcher set it; 0 in a single process."""
    return _first_int(_RANK_VARIABLES, 0)


def world_size() -> int:
    """Number of processes the launcher started; 1 in a single process."""
    return _first_int(_WORLD_SIZE_VARIABLES, 1)


def is_main_process() -> bool:
    """Whether this process may write (catalog saves, token cache, MLflow): rank 0."""
    return process_rank() == 0


@contextmanager
def main_process_first() -> Iterator[None]:
    """Run the body on the main process first, then on the others (one process: just run it).

    A collective barrier (``accelerate.PartialState().main_process_first()``), so it initialises
    Accelerate's process-wide state, and with it the device every later ``Accelerator`` uses:
    the CPU (gloo) when ``ACCELERATE_USE_CPU`` is set (``router_pipelines.launch --cpu``) or no
    accelerator is present, else the accelerator (NCCL on CUDA). Left to its default, the state
    would be non-distributed on a CPU-only machine and every process would train alone.
    """
    if world_size() <= 1:
        yield
        return
    import torch
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available()
    with PartialState(cpu=cpu).main_process_first():
        yield


class MetricNamespace:
    """Logs every metric a node logs under the node's namespace (``pretrain/train_loss``).

    Several trainings share one MLflow run (the default DAG trains the base model, then the
    switchable model); without a prefix their histories would interleave under one name.
    """

    def __init__(self) -> None:
        self._tokens: dict[str, Any] = {}

    @hook_impl
    def before_node_run(self, node: Any) -> None:
        from router_pipelines.tracking import set_metric_namespace

        self._tokens[node.name] = set_metric_namespace(node.namespace)

    @hook_impl
    def after_node_run(self, node: Any) -> None:
        self._reset(node)

    @hook_impl
    def on_node_error(self, node: Any) -> None:
        self._reset(node)

    def _reset(self, node: Any) -> None:
        from router_pipelines.tracking import reset_metric_namespace

        token = self._tokens.pop(node.name, None)
        if token is not None:
            reset_metric_namespace(token)


class CloseMlflowRuns:
    """Leaves no MLflow run active after a ``kedro run`` in this process.

    kedro-mlflow re-opens the pipeline's run before every node (``start_run(run_id=...,
    nested=True)``), which MLflow 3 pushes onto its active-run stack each time; its
    ``after_pipeline_run`` then ends only the top one. A notebook, a test or anything else that
    runs a second session in the same process would log into the stale run (and fail on the
    first parameter that changed). This ends what is left once the run is over, after
    kedro-mlflow's own hooks, down to whatever run was active before the pipeline started.
    """

    def __init__(self) -> None:
        self._outer_run_id: str | None = None

    @hook_impl(tryfirst=True)
    def before_pipeline_run(self) -> None:
        self._outer_run_id = _active_run_id()

    @hook_impl(trylast=True)
    def after_pipeline_run(self) -> None:
        self._close("FINISHED")

    @hook_impl(trylast=True)
    def on_pipeline_error(self) -> None:
        self._close("FAILED")

    def _close(self, status: str) -> None:
        import sys

        if "mlflow" not in sys.modules:  # nothing can be active
            return
        import mlflow

        while (run_id := _active_run_id()) is not None and run_id != self._outer_run_id:
            mlflow.end_run(status)


def _active_run_id() -> str | None:
    import sys

    if "mlflow" not in sys.modules:
        return None
    run = sys.modules["mlflow"].active_run()
    return None if run is None else run.info.run_id


class MainProcessOnlyOutputs:
    """Keeps every output of the run in memory on processes other than the main one."""

    @hook_impl
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        if is_main_process():
            return
        replaced = replace_persisted_outputs(pipeline, catalog)
        logger.info(
            "rank %d: outputs kept in memory, only rank 0 writes: %s",
            process_rank(),
            ", ".join(replaced) or "none",
        )


def replace_persisted_outputs(pipeline: Any, catalog: Any) -> list[str]:
    """Replace each catalog-declared output of ``pipeline`` by a ``MemoryDataset``.

    Outputs the catalog does not declare are already ``MemoryDataset`` (Kedro's default) and
    stay as they are, as do declared ``MemoryDataset`` entries.

    Returns:
        The names replaced, sorted.
    """
    replaced = []
    # The replacement is intended; Kedro's "Replacing dataset" warning would read like a mistake.
    catalog_logger = logging.getLogger("kedro.io.data_catalog")
    level = catalog_logger.level
    catalog_logger.setLevel(logging.ERROR)
    try:
        for name in sorted(pipeline.all_outputs()):
            if name not in catalog or catalog.get_type(name) == _MEMORY_DATASET:
                continue
            # "assign": a model is handed on as is; the default would deep-copy it on every load.
            catalog[name] = MemoryDataset(copy_mode="assign")
            replaced.append(name)
    finally:
        catalog_logger.setLevel(level)
    return replaced


# The experiment's kind, as MLflow records it ("custom_model_development": model training, not
# GenAI). The 3.17 UI does not read it to choose its page: its mode is the UI's own GenAI / Model
# training switch (workflow-based navigation is built in switched on), which the URL parameter
# ``?workflowType=machine_learning`` sets; `make mlflow-ui` and the run summary link with it
# (terminal.UI_TRAINING_MODE, docs/operations.md). The tag is kept for clients that do read it.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
EXPERIMENT_DESCRIPTIONS = {
    "debug": "Debug-sized runs of router_pipelines (`kedro run --env=debug`): tiny models on a "
    "slice of the corpus, registered under *_debug names. For checking the pipelines, not for "
    "comparing models.",
    None: "Training runs of router_pipelines: each run trains and evaluates the model families "
    "of one `kedro run` (tags: pipeline, family, env, git commit, data fingerprint). Compare "
    "runs side by side here or in notebooks/compare_runs.ipynb; docs/operations.md.",
}


class RunTags:
    """Makes kedro-mlflow's run comparable: a readable name and the tags a comparison needs.

    kedro-mlflow names the run after the pipeline (``__default__``), writes a ``kedro_command``
    without ``--env`` or ``--params`` and a ``runner`` tag that is an object's repr. Once its
    run is open, this sets:

    * the run name: ``<pipelines> [<env>] <namespace>:<main setting> ...``;
    * tags ``pipeline``, ``family`` (the namespaces that ran), ``env``, ``git_commit``,
      ``data_fingerprint`` (of the raw data, :func:`~router_pipelines.tracking.raw_data_fingerprint`),
      ``data_sets_fingerprint`` (of every corpus the parameters name: the chat corpus too),
      ``config_fingerprint`` (of all parameters) and ``catalog_fingerprint`` (of the resolved
      catalog configuration), for :mod:`router_pipelines.freshness`,
      ``kedro_command`` (as typed, ``--env`` and ``--params`` included), ``runner`` (its class);
    * ``base_model`` once the base model is known (registered in this run, or reused);
    * on the experiment: its kind (training runs first) and a description (per environment).
    """

    def __init__(self) -> None:
        self._env: str | None = None
        self._project_path: Any = None
        self._context: Any = None

    @hook_impl
    def after_context_created(self, context: Any) -> None:
        self._env = context.env
        self._project_path = context.project_path
        self._context = context  # its catalog configuration is read once a run is open

    @hook_impl(trylast=True)  # after kedro-mlflow opened its run
    def before_pipeline_run(self, run_params: dict[str, Any], pipeline: Any, catalog: Any) -> None:
        import sys

        if not is_main_process() or "mlflow" not in sys.modules:
            return
        import mlflow

        run = mlflow.active_run()
        if run is None:
            return
        from router_pipelines.freshness import catalog_config, config_fingerprint
        from router_pipelines.terminal import main_parameters, user_namespaces
        from router_pipelines.tracking import (
            catalog_fingerprint,
            data_sets_fingerprint,
            git_commit,
            kedro_command,
            raw_data_fingerprint,
        )

        try:
            parameters = catalog.load("parameters")
        except Exception:
            parameters = {}
        env = run_params.get("env") or self._env or "local"
        names = run_params.get("pipeline_names") or [
            run_params.get("pipeline_name") or "__default__"
        ]
        namespaces = user_namespaces(pipeline)
        settings = []
        for namespace in namespaces:
            shown = main_parameters(parameters, namespace)
            main = shown.get("model.preset") or shown.get("model.bit_widths")
            if main is not None:
                settings.append(f"{namespace}:{main}")
        runner = run_params.get("runner")
        tags = {
            "mlflow.runName": " ".join([f"{'+'.join(names)} [{env}]", *settings])[:250],
            "pipeline": "+".join(names),
            "family": ",".join(namespaces),
            "env": env,
            "git_commit": git_commit(self._project_path),
            "data_fingerprint": raw_data_fingerprint(parameters.get("data"), self._project_path),
            "data_sets_fingerprint": data_sets_fingerprint(parameters, self._project_path),
            "config_fingerprint": config_fingerprint(parameters),
            "catalog_fingerprint": catalog_fingerprint(catalog_config(self._context)),
            "kedro_command": kedro_command(run_params, env),
            "runner": _runner_name(runner),
        }
        mlflow.set_tags({key: value for key, value in tags.items() if value})
        _describe_experiment(run.info.experiment_id, env)

    @hook_impl
    def after_node_run(self, node: Any, outputs: dict[str, Any]) -> None:
        import sys

        if "mlflow" not in sys.modules or not is_main_process():
            return
        import mlflow

        if mlflow.active_run() is None:
            return
        registration = outputs.get("pretrain.registration")
        summary = outputs.get("pretrain.training_summary")
        if isinstance(registration, dict) and registration.get("registered"):
            mlflow.set_tag("base_model", f"{registration['name']}/{registration['version']}")
        elif isinstance(summary, dict) and summary.get("reused_from"):
            mlflow.set_tag("base_model", f"reused: {summary['reused_from']}"[:250])


def _runner_name(runner: Any) -> str:
    """``SequentialRunner`` for the runner, its class path or the repr Kedro passes."""
    import re

    if runner is None:
        return ""
    text = runner if isinstance(runner, str) else type(runner).__name__
    found = re.search(r"(\w+)(?: object at 0x[0-9a-f]+>?)?\s*$", text.rstrip(">"))
    return found.group(1) if found else text


def _describe_experiment(experiment_id: str, env: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    experiment = client.get_experiment(experiment_id)
    if experiment.tags.get(EXPERIMENT_KIND[0]) != EXPERIMENT_KIND[1]:
        client.set_experiment_tag(experiment_id, *EXPERIMENT_KIND)
    if not experiment.tags.get("mlflow.note.content"):
        description = EXPERIMENT_DESCRIPTIONS.get(env, EXPERIMENT_DESCRIPTIONS[None])
        client.set_experiment_tag(experiment_id, "mlflow.note.content", description)
