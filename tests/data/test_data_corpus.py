"""The committed default corpus: present, sized, valid, and what the build script writes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from router_pipelines.config import config_from_dict
from router_pipelines.data.config import DataConfig
from router_pipelines.data.sources import read_records

ROOT = Path(__file__).resolve().parents[2]
CORPUS = ROOT / "data" / "01_raw" / "python_docs.jsonl"
URL = re.compile(r"^(https://docs\.python\.org/3\.\d+/library/[\w.]+\.html|pydoc-topic:\S+)$")


def test_corpus_exists_and_is_sized():
    assert CORPUS.is_file(), f"{CORPUS} is missing: run python scripts/build_corpus.py"
    assert 1_000_000 <= CORPUS.stat().st_size <= 8_000_000


def test_every_line_validates_in_the_c4_schema():
    records = read_records(CORPUS, config_from_dict(DataConfig, {"on_invalid": "error"}, "data"))
    assert records.attrs["ingest"]["records_skipped"] == 0
    assert len(records) == records.attrs["ingest"]["records_read"] > 300
    assert records["text"].str.len().min() >= 200
    assert records["url"].map(lambda url: bool(URL.match(url))).all()
    assert records["url"].is_unique
    assert set(records["timestamp"]) == {"2024-01-01T00:00:00Z"}


def test_build_script_reproduces_the_committed_prefix(tmp_path):
    output = tmp_path / "docs.jsonl"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build_corpus.py"),
            "--output",
            str(output),
            "--max-bytes",
            "300000",
        ],
        check=True,
        capture_output=True,
        cwd=tmp_path,
    )
    built = output.read_text(encoding="utf-8").splitlines()
    committed = CORPUS.read_text(encoding="utf-8").splitlines()[: len(built)]
    assert len(built) > 10
    assert built == committed, "corpus differs from the script's output: rebuild it"
    assert all(json.loads(line)["text"] for line in built)
