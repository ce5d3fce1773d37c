"""Kedro project settings."""

# First, before anything can import mlflow or huggingface_hub: no telemetry (telemetry.py),
# and the library warnings that are noise for this project filtered (terminal.py, each with
# its reason). Kedro-Viz's version lookup is replaced before any `kedro viz` command runs.
import sys

from router_pipelines.telemetry import disable_telemetry, disable_viz_version_check
from router_pipelines.terminal import RunReport, quiet_library_noise

disable_telemetry()
quiet_library_noise()
if "kedro_viz" in sys.modules:  # loaded by Kedro's CLI as a plugin; not imported otherwise
    disable_viz_version_check()

# ruff: noqa: E402 - the imports below come after the switch on purpose
from omegaconf.resolvers import oc

from router_pipelines.hooks import (
    WRITING_PLUGINS,
    CloseMlflowRuns,
    MainProcessOnlyOutputs,
    MetricNamespace,
    RunTags,
    is_main_process,
)
from router_pipelines.validation import ValidateParameters

# ValidateParameters: every parameter checked before the first node (and before kedro-mlflow
# opens a run). MetricNamespace: each node's metrics under its namespace. Under `accelerate
# launch` only the main process writes (see hooks.py): the other processes keep every pipeline
# output in memory and run without the plugins that write (kedro-mlflow's run, kedro-viz's run
# statistics). CloseMlflowRuns: no MLflow run left active in the process after a run.
# RunTags: the MLflow run's name and comparison tags. RunReport: the start banner, log lines
# through the progress bar, the end summary (terminal.py).
HOOKS = (
    ValidateParameters(),
    MetricNamespace(),
    MainProcessOnlyOutputs(),
    CloseMlflowRuns(),
    RunTags(),
    RunReport(),
)

# kedro-telemetry would try to reach the network; the project never sends telemetry
# (consent is also refused in the `.telemetry` file at the project root).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-telemetry",) + (() if is_main_process() else WRITING_PLUGINS)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # `oc.env` lets conf/base/mlflow.yml honour MLFLOW_TRACKING_URI (tests, remote servers).
    "custom_resolvers": {"oc.env": oc.env},
    # An environment (e.g. conf/debug) overrides single parameter keys, not whole groups.
    "merge_strategy": {"parameters": "soft"},
}
