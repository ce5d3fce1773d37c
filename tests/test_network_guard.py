"""No entry point reaches the network: a debug `kedro run`, as a user starts it, under a guard.

The run is a subprocess in a throw-away copy of the project, with the environment a user has:
no ``PYTEST_*`` or CI variables (MLflow turns its telemetry off when it sees them, which hid
the lookup from the suite) and none of the switches the project sets itself (so the test sees
whether the project sets them). ``tests/network_guard.py`` records and refuses every lookup or
connection that leaves the machine, in every thread; the test fails naming each one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from project_copy import copy_project

from router_pipelines.telemetry import TELEMETRY_SWITCHES

GUARD = Path(__file__).with_name("network_guard.py")
pytestmark = pytest.mark.slow

# What the project, the Makefile or tests/conftest.py set, and what MLflow reads as "CI/tests".
PROJECT_SET = {
    *TELEMETRY_SWITCHES,
    "DO_NOT_TRACK",
    "DISABLE_TELEMETRY",
    "MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK",
    "MLFLOW_TRACKING_URI",
    "HF_HUB_OFFLINE",
    "HF_DATASETS_OFFLINE",
    "TRANSFORMERS_OFFLINE",
}
CI_MARKERS = {
    "CI",
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "CIRCLECI",
    "JENKINS_URL",
    "TRAVIS",
    "TF_BUILD",
    "BITBUCKET_BUILD_NUMBER",
    "CODEBUILD_BUILD_ARN",
    "BUILDKITE",
    "TEAMCITY_VERSION",
    "CLOUD_RUN_EXECUTION",
}


def user_environment() -> dict[str, str]:
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("PYTEST_") and key not in PROJECT_SET | CI_MARKERS
    }


def guarded(args: list[str], cwd: Path, log: Path, timeout: int = 900):
    return subprocess.run(
        [sys.executable, str(GUARD), str(log), *args],
        cwd=cwd,
        env=user_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def attempts(log: Path) -> list[dict]:
    if not log.is_file():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def described(found: list[dict]) -> str:
    return "; ".join(f"{a['event']} {a['address']} from {a['culprit']}" for a in found)


@pytest.fixture
def project_copy(tmp_path) -> Path:
    """conf/ (without local), pyproject.toml, .telemetry and the embedded corpus; the package
    itself is the installed (editable) one."""
    return copy_project(tmp_path / "project")


def test_guard_catches_lookups_and_connections_in_any_thread(tmp_path):
    log = tmp_path / "guard.log"
    code = "\n".join(
        [
            "import socket, threading",
            "socket.getaddrinfo('localhost', 80)",  # loopback: allowed
            "server = socket.socket(); server.bind(('127.0.0.1', 0)); server.listen()",
            "socket.create_connection(server.getsockname()).close()",
            "def lookup():",
            "    try: socket.getaddrinfo('example.org', 443)",
            "    except OSError: pass",
            "thread = threading.Thread(target=lookup); thread.start(); thread.join()",
            "raw = socket.socket()",
            "try: raw.connect(('93.184.216.34', 443))",
            "except OSError: pass",
            "print('finished')",
        ]
    )
    result = guarded(["-c", code], tmp_path, log, timeout=60)
    assert result.returncode == 0 and "finished" in result.stdout, result.stderr
    found = attempts(log)
    assert [(a["event"], a["address"]) for a in found] == [
        ("socket.getaddrinfo", "example.org:443"),
        ("socket.connect", "93.184.216.34:443"),
    ]
    assert all(a["culprit"].startswith("<guarded>") for a in found)


def test_debug_kedro_run_makes_no_network_connection(project_copy):
    log = project_copy / "guard.log"
    result = guarded(
        ["-m", "kedro", "run", "--env=debug", "--pipeline=pretrain"], project_copy, log
    )
    found = attempts(log)
    assert not found, f"the run reached for the network: {described(found)}"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (project_copy / "mlflow.db").is_file(), "the run did use MLflow (sqlite store)"
