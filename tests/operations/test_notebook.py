"""notebooks/compare_runs.ipynb runs top to bottom (nbclient) on the debug run's store."""

from __future__ import annotations

import pytest
from project_copy import PROJECT_ROOT

pytestmark = pytest.mark.slow

NOTEBOOK = PROJECT_ROOT / "notebooks" / "compare_runs.ipynb"


def test_compare_runs_notebook_executes_on_the_debug_store(debug_run, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", debug_run.uri)  # the kernel inherits it
    # and not a registry URI an earlier test's mlflow.set_registry_uri() exported
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError naming the failing cell

    def text(cell) -> str:
        parts = []
        for output in cell.outputs:
            parts.append(output.get("text", ""))
            parts.extend(str(v) for v in output.get("data", {}).values())
        return "\n".join(parts)

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    outputs = [text(cell) for cell in code]
    assert "router_pipelines_debug" in outputs[0]
    # every family's promotion metric is known, whether or not the store has its runs yet
    for family_metric in ("'memory': 'chat_validation_loss'", "'query_router': 'router_apgr'"):
        assert family_metric in outputs[0], outputs[0]
    assert "__default__ [debug]" in outputs[1] and "lowest_width_perplexity" in outputs[1]
    assert "pretrain/validation_perplexity" in outputs[1] and "pretrain/parameters" in outputs[1]
    assert any("image/png" in output.get("data", {}) for output in code[2].outputs), "a plot"
    assert "8 configurations from 1 runs" in outputs[3]
    assert "champion" in outputs[4] and "base_lm_debug" in outputs[4]
    assert "lowest_width_effective_bits" in outputs[4], "the cost metric of the switchable family"
    assert "switchable_lm_debug [" in outputs[5]
    assert not (tmp_path / "mlflow.db").exists(), "no stray store where the notebook ran"
