"""`make clean` removes only cheap outputs; `make clean-all` asks (or needs FORCE=1) first."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

CORPUS = "data/01_raw/python_docs.jsonl"
CHEAP = [  # rebuilt by the next run in seconds to minutes
    "data/04_feature/token_cache/0123abcd/blocks.npy",
    "data/04_feature/token_cache_debug/4567/blocks.npy",
    "data/05_model_input/train_tokens.json",  # a reference into the token cache
    "data/05_model_input/debug/validation_tokens.json",
    "data/08_reporting/pretrain/training_summary.json",
    "data/08_reporting/debug/pretrain/loss_curve.png",
    "data/02_intermediate/debug/stream.jsonl",
    "data/06_models/pretrain/.tmp-pretrain-123-abcd/config.json",  # an interrupted save
    "build/api/main",
    ".viz/stats.json",
]
VALUABLE = [  # hours of training, the run history and the registry
    "data/06_models/pretrain/2026-01-01T00.00.00.000Z/pretrain/model.safetensors",
    "data/06_models/checkpoints/pretrain/run/checkpoint-100/state.json",
    "data/06_models/tokenizer/2026-01-01T00.00.00.000Z/tokenizer/tokenizer.json",
    "data/07_model_output/switchable/evaluation.parquet",
    "data/03_primary/notes.txt",
    "mlflow.db",
    "mlruns/1/models/m-1/artifacts/MLmodel",
    "mlartifacts/1/x",
]
NEVER = [  # the project itself
    CORPUS,
    "data/01_raw/.gitkeep",
    "data/04_feature/.gitkeep",
    "data/05_model_input/.gitkeep",
    "data/08_reporting/.gitkeep",
    "conf/base/catalog.yml",
    "src/router_pipelines/__init__.py",
]


@pytest.fixture
def project(tmp_path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "Makefile", root / "Makefile")
    for relative in CHEAP + VALUABLE + NEVER:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(relative)
    return root


def make(root: Path, *args: str, answer: str | None = None):
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(root), *args],
        input=answer if answer is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
    )


def files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_clean_removes_only_cheap_outputs_and_says_what(project):
    result = make(project, "clean")
    assert result.returncode == 0, result.stderr
    assert files(project) == {*VALUABLE, *NEVER, "Makefile"}
    for removed in ("data/04_feature/token_cache", "data/08_reporting/pretrain", "build", ".viz"):
        assert f"removed {removed}\n" in result.stdout
    assert "removed data/06_models/pretrain/.tmp-pretrain-123-abcd" in result.stdout
    assert "kept: models" in result.stdout

    again = make(project, "clean")
    assert again.returncode == 0 and "nothing to clean" in again.stdout


@pytest.mark.parametrize("answer", ["", "n\n", "no\n", "\n"])
def test_clean_all_without_force_or_yes_deletes_nothing(project, answer):
    before = files(project)
    result = make(project, "clean-all", answer=answer)
    assert result.returncode != 0
    assert "nothing deleted" in result.stdout
    assert files(project) == before
    for listed in ("mlflow.db", "mlruns", "data/06_models/pretrain", "data/06_models/checkpoints"):
        assert f"  {listed}\n" in result.stdout, f"{listed} is not listed before asking"
    assert CORPUS not in result.stdout


@pytest.mark.parametrize(("args", "answer"), [((), "y\n"), (("FORCE=1",), None)])
def test_clean_all_deletes_everything_but_the_project_and_corpus(project, args, answer):
    result = make(project, "clean-all", *args, answer=answer)
    assert result.returncode == 0, result.stdout + result.stderr
    assert files(project) == {*NEVER, "Makefile"}
    assert "removed mlflow.db" in result.stdout
    assert make(project, "clean-all", "FORCE=1").stdout.strip() == "nothing to delete"
