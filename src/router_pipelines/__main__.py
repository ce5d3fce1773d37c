"""router_pipelines file for ensuring the package is executable
as `router-pipelines` and `python -m router_pipelines`
"""

import sys
from pathlib import Path
from typing import Any

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project

from router_pipelines.telemetry import disable_telemetry


def main(*args, **kwargs) -> Any:
    disable_telemetry()  # before the kedro-mlflow plugin imports mlflow
    package_name = Path(__file__).parent.name
    configure_project(package_name)

    interactive = hasattr(sys, "ps1")
    kwargs["standalone_mode"] = not interactive

    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
