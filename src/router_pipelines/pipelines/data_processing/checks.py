"""Pre-run checks of the ``data`` group (see router_pipelines.validation)."""

from __future__ import annotations

from typing import Any

from router_pipelines.config import config_from_dict
from router_pipelines.validation import RunParameters, path_problem


def parse_data_params(group: dict[str, Any] | None) -> Any:
    from router_pipelines.data.config import DataConfig

    return config_from_dict(DataConfig, group, "data")


def check_data(run: RunParameters) -> list[str]:
    data = run.parsed["data"]
    problems = [
        path_problem("data.cache_dir", data.cache_dir, must_be="folder"),
        None if data.hub_dataset else path_problem("data.raw_path", data.raw_path, must_be="file"),
    ]
    evaluators = [
        name
        for name in run.consumers("validation_tokens")
        if not name.startswith("data_processing.")
    ]
    if data.validation_fraction == 0 and evaluators:
        problems.append(
            "data.validation_fraction: 0 leaves no validation split, but "
            f"{', '.join(evaluators)} evaluate on it; use a fraction in (0, 1), e.g. 0.05"
        )
    return [problem for problem in problems if problem]
