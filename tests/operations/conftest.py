"""One debug run shared by the operations tests (terminal, MLflow, promotion, browser, notebook).

``debug_run`` runs ``kedro run --env=debug`` once per session, as a user would start it (a
subprocess in a throw-away project copy, with a user's environment: no ``PYTEST_*``/CI
variables, none of the project's own switches) under ``tests/network_guard.py``, so every test
reads the same store, outputs and terminal output, and the network check sees the real entry
point.
"""

from __future__ import annotations

import pytest

from operations.support import DebugRun, start_debug_run


@pytest.fixture(scope="session")
def debug_run(tmp_path_factory) -> DebugRun:
    return start_debug_run(tmp_path_factory.mktemp("operations") / "project")
