"""Pre-run checks of the ``data`` group (see router_pipelines.validation)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from router_pipelines.config import config_from_dict
from router_pipelines.validation import RunParameters, path_problem, remote_code_problem


def parse_data_params(group: dict[str, Any] | None) -> Any:
    from router_pipelines.data.config import DataConfig

    return config_from_dict(DataConfig, group, "data")


def check_data(run: RunParameters) -> list[str]:
    data = run.parsed["data"]
    problems = [path_problem("data.cache_dir", data.cache_dir, must_be="folder")]
    if not data.hub_dataset:
        problems.append(path_problem("data.raw_path", data.raw_path, must_be="file"))
        problems.append(_format_problem(data))
    problems.append(
        remote_code_problem(
            "data.tokenizer", data.tokenizer.name_or_path, data.tokenizer.trust_remote_code
        )
    )
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


def _format_problem(data: Any) -> str | None:
    """``data.format: auto`` needs a suffix it knows (a .csv or .gz file is not read as JSONL)."""
    from router_pipelines.data.sources import SUFFIX_FORMATS

    suffix = Path(data.raw_path).suffix.lower()
    if data.format != "auto" or suffix in SUFFIX_FORMATS:
        return None
    return (
        f"data.raw_path: cannot tell the format of {data.raw_path!r} from its suffix {suffix!r} "
        f"(known: {sorted(SUFFIX_FORMATS)}); convert it, or set data.format"
    )
