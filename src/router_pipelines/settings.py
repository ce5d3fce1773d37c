"""Kedro project settings."""

from omegaconf.resolvers import oc

# kedro-telemetry would try to reach the network; the project never sends telemetry
# (consent is also refused in the `.telemetry` file at the project root).
DISABLE_HOOKS_FOR_PLUGINS = ("kedro-telemetry",)

CONFIG_LOADER_ARGS = {
    "base_env": "base",
    "default_run_env": "local",
    # `oc.env` lets conf/base/mlflow.yml honour MLFLOW_TRACKING_URI (tests, remote servers).
    "custom_resolvers": {"oc.env": oc.env},
    # An environment (e.g. conf/debug) overrides single parameter keys, not whole groups.
    "merge_strategy": {"parameters": "soft"},
}
