"""What `kedro run` prints and what it sends: banner, summary, no noise, no network."""

from __future__ import annotations

import logging
import re
import warnings

import pytest

from operations.support import described
from router_pipelines import telemetry, terminal

pytestmark = pytest.mark.slow

# Library noise seen before the fix, each either filtered (terminal.NOISE) or fixed at the source.
NOISE_TEXTS = (
    "register_new_resolver() is deprecated",  # filtered: Kedro/kedro-mlflow call it
    "Add type hints to the `predict` method",  # filtered: our signatures are explicit
    "Could not extract type hints",  # filtered: Kedro's validator on lazy type hints
    "must be `None` or an integer within the vocabulary",  # fixed: presets pass the token ids
    "Downloading artifacts",  # MLflow's artifact bar: off
    "is made from a 'partial' function",  # fixed: promotion and provider nodes named
    "did not match load version",  # filtered for our model datasets: a reused version
)


def test_debug_run_reaches_no_network(debug_run):
    assert not debug_run.network, f"the run reached for the network: {described(debug_run.network)}"


def test_debug_run_prints_no_library_noise(debug_run):
    found = [text for text in NOISE_TEXTS if text in debug_run.output]
    assert not found, found


def test_debug_run_starts_with_a_banner_and_ends_with_a_summary(debug_run):
    out = debug_run.output
    banner = re.search(r"pipeline\s+__default__\s+\((\d+) nodes\)", out)
    assert banner and int(banner.group(1)) >= 10
    assert re.search(r"env\s+debug", out)
    assert re.search(r"device\s+cpu, fp32", out)
    assert re.search(r"pretrain\s+model\.preset=debug", out)
    assert re.search(r"switchable\s+model\.bit_widths=\[2, 4, 8\]", out)
    assert re.search(r"models\s+data/06_models/debug", out)
    assert re.search(r"mlflow\s+sqlite:///.*mlflow\.db", out)
    assert out.index("pipeline ") < out.index("Running node"), "the banner comes first"
    summary = out[out.rindex("Pipeline execution completed") :]
    for model in ("base_lm_debug", "switchable_lm_debug"):
        row = next(line for line in summary.splitlines() if model in line)
        assert re.search(rf"{model}\s+│\s+1\s+│\s+champion", row), row
    assert "validation_perplexity=" in summary and "lowest_width_perplexity=" in summary
    assert re.search(
        r"make mlflow-ui.*http://127\.0\.0\.1:5000/#/experiments/\d+/runs/\w+"
        r"\?workflowType=machine_learning",
        summary,
    )


def test_noise_filters_drop_captured_warnings_and_keep_others(monkeypatch):
    terminal.quiet_library_noise()
    captured = logging.getLogger("py.warnings")
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    monkeypatch.setattr(captured, "disabled", False)
    monkeypatch.setattr(captured, "level", logging.WARNING)
    captured.addHandler(handler)
    try:
        # what logging.captureWarnings makes of a warning (Kedro turns it on): a record on the
        # py.warnings logger; MLflow's simplefilter("once") cannot shadow a logger filter
        for text in (
            "\x1b[33mAdd type hints to the `predict` method ...",
            "register_new_resolver() is deprecated and will be removed",
            "Save version '2026-12-02T17.03.43.621Z' did not match load version "
            "'2026-12-02T16.47.47.366Z' for router_pipelines.datasets.pretrained."
            "PretrainedModelDataset(path='data/06_models/switchable')",
            "a real problem",
            "Save version 'a' did not match load version 'b' for "
            "kedro_datasets.pandas.ParquetDataset(filepath='x.parquet')",
        ):
            captured.warning("%s", warnings.formatwarning(text, UserWarning, "lib.py", 1))
    finally:
        captured.removeHandler(handler)
    messages = [record.getMessage() for record in records]
    # kept: a real problem, and a version mismatch of a dataset that is not the project's
    assert len(messages) == 2, messages
    assert "a real problem" in messages[0] and "ParquetDataset" in messages[1], messages


def test_every_noisy_logger_is_quietened_wherever_it_is_listed(monkeypatch):
    """Each logger entry of NOISE gets its filter, not only one listed last."""
    # an entry with neither a message nor a logger, listed last
    monkeypatch.setattr(terminal, "NOISE", (*terminal.NOISE, terminal.Noise("nothing to filter")))
    target = logging.getLogger("kedro.validation.type_extractor")
    monkeypatch.setattr(target, "filters", [])
    terminal.quiet_library_noise()
    record = target.makeRecord(
        target.name, logging.WARNING, "x.py", 1, "Could not extract", (), None
    )
    assert target.filters and not target.filter(record)
    error = target.makeRecord(target.name, logging.ERROR, "x.py", 1, "broken", (), None)
    assert target.filter(error)


def test_log_lines_are_written_through_tqdm(monkeypatch):
    """A rich log line during training is written with tqdm.write (the bar is cleared and
    redrawn below it) instead of overwriting the bar."""
    import io

    import tqdm
    from rich.console import Console
    from rich.logging import RichHandler

    written = []
    monkeypatch.setattr(tqdm.tqdm, "write", classmethod(lambda cls, s, **kw: written.append(s)))
    stream = io.StringIO()
    handler = RichHandler(console=Console(file=stream, width=100))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        changed = terminal.route_logs_through_progress_bars()
        assert handler.console in [console for console, _ in changed]
        logging.getLogger("router_pipelines.test").warning("saved checkpoint-15")
        terminal.restore_log_streams(changed)
        logging.getLogger("router_pipelines.test").warning("after the run")
    finally:
        root.removeHandler(handler)
    assert any("saved checkpoint-15" in text for text in written)
    assert not any("after the run" in text for text in written)
    assert "after the run" in stream.getvalue() and "checkpoint-15" not in stream.getvalue()


def test_viz_version_check_asks_nobody(monkeypatch):
    pytest.importorskip("kedro_viz")
    import requests
    from kedro_viz import __version__
    from kedro_viz.integrations import pypi

    def no_network(*args, **kwargs):
        raise AssertionError(f"Kedro-Viz asked the network: {args}")

    from kedro_viz.api.rest.responses import version

    monkeypatch.setattr(requests, "get", no_network)
    for module in (pypi, version):  # restored after the test
        monkeypatch.setattr(module, "get_latest_version", module.get_latest_version)
    assert telemetry.disable_viz_version_check() is True
    assert str(pypi.get_latest_version()) == __version__
    response = version.get_version_response()
    assert response.latest == __version__ and response.is_outdated is False


def test_every_telemetry_switch_is_set_for_the_project(monkeypatch):
    for name in telemetry.TELEMETRY_SWITCHES:
        monkeypatch.delenv(name, raising=False)
    telemetry.disable_telemetry()
    import os

    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
