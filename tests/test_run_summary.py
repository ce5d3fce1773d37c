"""The end-of-run summary table (``terminal.print_summary``): long reasons are cut at a word."""

from __future__ import annotations

import pytest

from router_pipelines import terminal
from router_pipelines.terminal import print_summary

MLFLOW_REASON = (
    "Metric router_b3_perplexity minimum relative change check failed: candidate model "
    "router_b3_perplexity = 286.56746860992547, baseline model router_b3_perplexity = "
    "286.56746860992547, router_b3_perplexity minimum relative change threshold = 0.01."
)


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """A console wide enough that no cell wraps: one table row per line."""
    from rich.console import Console

    monkeypatch.setattr(terminal, "_console", lambda: Console(highlight=False, width=400))


def _cells(capsys) -> list[str]:
    return [
        part.strip()
        for line in capsys.readouterr().out.splitlines()
        for part in line.split("│")
        if part.strip()
    ]


def test_a_challengers_reason_is_cut_between_words(capsys):
    results = {
        "precision_router": {
            "registration": {
                "registered": True,
                "name": "precision_router",
                "version": "2",
                "metrics": {"router_b3_perplexity": 286.567},
            },
            "promotion": {"promoted": False, "alias": "challenger", "reason": MLFLOW_REASON},
        }
    }
    print_summary(results, None)
    cells = _cells(capsys)
    # at most 60 characters of the reason, ending on a whole word (the old [:60] left "check f)")
    assert "challenger (Metric router_b3_perplexity minimum relative change check …)" in cells
    assert "router_b3_perplexity=286.6" in cells


def test_a_companion_gets_its_own_row_with_the_alias_it_follows(capsys):
    results = {
        "query_router": {
            "registration": {"registered": True, "name": "query_router", "version": "3"},
            "promotion": {
                "promoted": True,
                "alias": "champion",
                "companions": [{"name": "routed_lm", "version": "5", "alias": "champion"}],
            },
        }
    }
    print_summary(results, None)
    cells = _cells(capsys)
    assert cells[cells.index("routed_lm") + 1 : cells.index("routed_lm") + 3] == [
        "5",
        "champion (with query_router)",
    ]


def test_an_unregistered_familys_reason_is_cut_between_words(capsys):
    reason = "not trained in this run (catalog: " + "/very/long" * 12 + "/router)"
    print_summary({"query_router": {"registration": {"registered": False, "reason": reason}}}, None)
    assert "not trained in this run (catalog: …" in _cells(capsys)


def test_families_are_listed_in_the_order_they_finish():
    """The default run: the query router cuts its queries from the validation split before the
    switchable model exists, yet it is listed after the switchable model it routes."""
    from router_pipelines.pipeline_registry import register_pipelines
    from router_pipelines.terminal import user_namespaces

    assert user_namespaces(register_pipelines()["__default__"]) == [
        "data_processing",
        "pretrain",
        "switchable",
        "precision_router",
        "query_router",
    ]
