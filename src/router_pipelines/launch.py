"""Run one of the project's Kedro pipelines in this process; made for ``accelerate launch``.

    # DDP on 4 GPUs: every process runs the pipeline, the training nodes train together
    accelerate launch --multi_gpu --num_processes 4 -m router_pipelines.launch --pipeline pretrain
    # CPU DDP (gloo), e.g. for tests; also on a machine with GPUs
    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 \\
        -m router_pipelines.launch --pipeline pretrain --env debug --cpu
    # one process, like `kedro run --pipeline=pretrain --env=debug`
    python -m router_pipelines.launch --pipeline pretrain --env debug

Kedro has no multi-process runner, and it needs none here: each process bootstraps the project
from the working directory, opens its own ``KedroSession`` and runs the same pipeline. The
training nodes build their ``Accelerator`` inside the node, so the ``Trainer`` finds the other
processes there and trains with DDP. What each process may write is decided by the project's
settings and hooks (:mod:`router_pipelines.hooks`): only the main process saves catalog outputs,
builds the token cache and logs to MLflow (its kedro-mlflow run is THE run).

Importing this module has no side effects; :func:`main` does the work.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from router_pipelines.hooks import is_main_process
from router_pipelines.telemetry import disable_telemetry


def _runtime_params(value: str) -> dict[str, Any]:
    """``a.b=1,c=[2,4]`` -> ``{"a": {"b": 1}, "c": [2, 4]}``, as this project's ``kedro run``."""
    import click

    from router_pipelines.cli import parse_params

    try:
        return parse_params(value)
    except click.UsageError as error:
        raise argparse.ArgumentTypeError(error.message) from error


def _pipeline_names(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a pipeline name, e.g. --pipeline pretrain")
    return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options (``argv`` defaults to ``sys.argv[1:]``)."""
    parser = argparse.ArgumentParser(
        prog="python -m router_pipelines.launch",
        description="Run a Kedro pipeline of this project; under `accelerate launch` in every "
        "process, with only the main process writing.",
    )
    parser.add_argument(
        "--pipeline",
        "--pipelines",
        dest="pipelines",
        type=_pipeline_names,
        default=None,
        help="registered pipeline(s) to run, comma-separated (default: __default__)",
    )
    parser.add_argument("--env", "-e", default=None, help="Kedro environment, e.g. debug")
    parser.add_argument(
        "--params",
        type=_runtime_params,
        default={},
        help="runtime parameters as in `kedro run`: pretrain.training.max_steps=100,data.seed=1",
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="train on the CPU whatever the training configs say (sets ACCELERATE_USE_CPU): "
        "CPU DDP over gloo, also on a machine with GPUs",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Bootstrap the project in the working directory and run the pipeline once.

    Returns:
        What ``KedroSession.run`` returns (the pipeline's free outputs).
    """
    disable_telemetry()  # before Kedro's session imports mlflow
    args = parse_args(argv)
    if args.cpu:
        # Read by every Accelerator (and the token-cache barrier) that this process builds.
        os.environ["ACCELERATE_USE_CPU"] = "true"
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.runner import SequentialRunner

    project_path = Path.cwd()
    bootstrap_project(project_path)
    if not is_main_process():
        # Every process logs the same pipeline; the main process's INFO log is the one to read.
        logging.disable(logging.INFO)
    try:
        with KedroSession.create(
            project_path=project_path, env=args.env, runtime_params=args.params or None
        ) as session:
            # Sequential, as `kedro run` (ParallelRunner would skip the hooks and fork).
            return session.run(pipeline_names=args.pipelines, runner=SequentialRunner())
    finally:
        _release_process_group()


def _release_process_group() -> None:
    """Tear down this process's torch.distributed group, if a training node started one.

    Local, not a barrier: the main process may still be registering models while the others
    finish, and a collective here could time out on them.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
