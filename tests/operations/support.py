"""Helpers of the operations tests: the shared debug run, servers on a free loopback port, and
headless Chromium (``from operations.support import ...``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from project_copy import PROJECT_ROOT, copy_project
from test_network_guard import attempts, described, guarded, user_environment

# Screenshots and DOM dumps of the browser checks: a CI artifact (`make clean` removes build/).
BROWSER_OUTPUT = PROJECT_ROOT / "build" / "browser"
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


@dataclass
class DebugRun:
    root: Path
    uri: str  # the run's MLflow store (sqlite, absolute)
    output: str  # stdout + stderr of `kedro run`
    network: list[dict]  # what the guard refused

    def client(self):
        import mlflow

        return mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


def start_debug_run(root: Path, *options: str) -> DebugRun:
    """``kedro run --env=debug [options]`` in a fresh project copy at ``root``, under the
    guard."""
    copy_project(root)
    log = root / "network.jsonl"
    result = guarded(["-m", "kedro", "run", "--env=debug", *options], root, log, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-6000:]
    return DebugRun(root, f"sqlite:///{root / 'mlflow.db'}", output, attempts(log))


def free_port() -> int:
    """A free TCP port on 127.0.0.1 below the kernel's ephemeral range: Kedro-Viz refuses ports
    above 49151, where an OS-assigned port usually is."""
    import random

    for port in random.Random().sample(range(20000, 32000), 200):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000 on 127.0.0.1")


def get_json(url: str, timeout: float = 10) -> object:
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


@contextlib.contextmanager
def server(args: list[str], cwd: Path, url: str, env: dict | None = None) -> Iterator[Path]:
    """Start ``args`` (its own process group) under the network guard, wait until ``url``
    answers, yield the guard's log; the group is stopped at the end."""
    log = cwd / f"guard-{free_port()}.jsonl"
    process = subprocess.Popen(
        [sys.executable, str(PROJECT_ROOT / "tests" / "network_guard.py"), str(log), *args],
        cwd=cwd,
        env=env or user_environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        # generous: `mlflow ui` alone takes over two minutes to answer on a loaded 2-core machine
        deadline = time.monotonic() + 300
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()  # noqa: S310 - loopback
                break
            except OSError:
                if process.poll() is not None:
                    raise AssertionError(
                        f"{args} exited: {process.stdout.read()[-4000:]}"
                    ) from None
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not answer within 300 s") from None
                time.sleep(0.5)
        yield log
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def chromium() -> str:
    """The Debian chromium binary (``make browser`` installs it); CI fails without it, a
    developer's machine without it skips the browser checks."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed: `make browser` (apt-get install -y chromium)")
    pytest.skip("chromium is not installed (make browser)")


def render(url: str, name: str, tmp_path: Path, wait_ms: int = 20000) -> str:
    """Open ``url`` in headless Chromium (fresh profile, no background networking); save
    ``build/browser/<name>.png`` and return the DOM after ``wait_ms`` of virtual time."""
    binary = chromium()
    BROWSER_OUTPUT.mkdir(parents=True, exist_ok=True)
    common = [
        binary,
        *BROWSER_FLAGS,
        "--window-size=1400,900",
        f"--virtual-time-budget={wait_ms}",
    ]
    screenshot = BROWSER_OUTPUT / f"{name}.png"
    shot = subprocess.run(
        [
            *common,
            f"--user-data-dir={tmp_path / 'profile-shot'}",
            f"--screenshot={screenshot}",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert shot.returncode == 0 and screenshot.is_file(), shot.stderr[-3000:]
    dom = subprocess.run(
        [*common, f"--user-data-dir={tmp_path / 'profile-dom'}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert dom.returncode == 0, dom.stderr[-3000:]
    (BROWSER_OUTPUT / f"{name}.html").write_text(dom.stdout)
    return dom.stdout


__all__ = [
    "BROWSER_OUTPUT",
    "DebugRun",
    "described",
    "free_port",
    "get_json",
    "guarded",
    "render",
    "server",
    "start_debug_run",
    "user_environment",
]
