#!/usr/bin/env bash
# Renders the Airflow DAGs of router_pipelines (one per user-facing pipeline and Kedro
# environment) with kedro-airflow and the project's template; `make airflow-dags` and
# tests/operations/test_airflow.py both call it, so they generate the same files.
#
#   airflow/generate_dags.sh PROJECT_PATH PROJECT_VENV TARGET_DIR [ENV ...]
#
# PROJECT_PATH and PROJECT_VENV are absolute and baked into the DAGs (the tasks run
# `PROJECT_VENV/bin/kedro run` in PROJECT_PATH; ROUTER_PIPELINES_PROJECT/_VENV override them
# where the DAGs are deployed). Writes TARGET_DIR/<env>/router_pipelines_*_dag.py; envs default
# to `local` (conf/base + conf/local: the real DAGs) and `debug`.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: $0 PROJECT_PATH PROJECT_VENV TARGET_DIR [ENV ...]" >&2
    exit 2
fi
project=$(cd "$1" && pwd)
venv=$(cd "$2" && pwd)
target=$3
shift 3
if [ "$#" -gt 0 ]; then envs=("$@"); else envs=(local debug); fi
template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/dag_template.py.j2
# The user-facing pipelines (src/router_pipelines/pipeline_registry.py); data_processing,
# depth_routing (mod/dtf by parameter) and precision_router_ptq are run by hand.
pipelines=${AIRFLOW_PIPELINES:-__default__,pretrain,switchable,precision_router,query_router,memory,mod,dtf}
for env in "${envs[@]}"; do
    mkdir -p "$target/$env"
    folder=$(cd "$target/$env" && pwd)
    rm -f "$folder"/router_pipelines*_dag.py
    (cd "$project" && "$venv/bin/kedro" airflow create --env="$env" --pipelines="$pipelines" \
        --group-by=memory --jinja-file="$template" --target-dir="$folder" \
        --params="project_path=$project,venv=$venv")
done
