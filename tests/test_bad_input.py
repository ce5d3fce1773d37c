"""What the project promises about bad input (docs/bad_input.md), checked case by case.

Every case runs a real ``KedroSession`` of the debug environment in a project copy that already
holds the outputs of an earlier good run (so there is something to overwrite), and checks:
the run stops with an error whose message names the input; no node ran (parameter problems)
or only the reading node did (problems inside the corpus file, which only that node reads);
no file under data/ changed and no model version in the MLflow registry changed. A few cases
also go through the real ``kedro run`` command for the exit code and a message without a
traceback.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
from kedro.framework.hooks import hook_impl
from kedro.framework.session import KedroSession
from kedro.framework.startup import bootstrap_project
from project_copy import copy_project
from transformers import GPT2Config, GPT2LMHeadModel

pytestmark = pytest.mark.slow

INGEST = "data_processing.ingest_corpus"


def _bad_files(root: Path) -> dict[str, str]:
    """Broken inputs, outside data/ (which the cases must leave untouched)."""
    bad = root / "bad"
    bad.mkdir()
    (bad / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (bad / "table.csv").write_text("text,url\nhello,x\n")
    with gzip.open(bad / "corpus.jsonl.gz", "wt") as handle:
        handle.write(json.dumps({"text": "hello"}) + "\n")
    (bad / "arrays.jsonl").write_text(json.dumps(["not", "an", "object"]) + "\n")
    (bad / "empty.jsonl").write_text("")
    (bad / "empty_texts.jsonl").write_text(
        "".join(json.dumps({"text": "  "}) + "\n" for _ in range(5))
    )
    (bad / "wrong_type.jsonl").write_text(json.dumps({"text": 5}) + "\n")
    chat = {"messages": [{"role": "user", "content": "hi"}, {"content": "no role"}]}
    (bad / "chat.jsonl").write_text(json.dumps(chat) + "\n")
    (bad / "a_file").write_text("not a folder")
    (bad / "folder.jsonl").mkdir()
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=300))
    model.save_pretrained(bad / "gpt2")  # a pretrained model with a tokenizer of its own
    model.save_pretrained(bad / "remote")
    config = json.loads((bad / "remote/config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (bad / "remote/config.json").write_text(json.dumps(config))
    return {path.name: str(path) for path in bad.iterdir()}


# (id, pipeline, runtime params (with {file} placeholders), message regex, nodes allowed to run)
CASES = [
    ("unknown group", "pretrain", {"pretrian": {"training": {"max_steps": 5}}},
     r"unknown key 'pretrian' \(did you mean 'pretrain'\?\)", ()),
    ("old top-level raw_path", "pretrain", {"raw_path": "x.jsonl"},
     r"raw_path is now data.raw_path", ()),
    ("typo in a key", "pretrain", {"pretrain": {"training": {"max_step": 5}}},
     r"pretrain.training: unknown key 'max_step' \(did you mean 'max_steps'\?\)", ()),
    ("typo in a nested key", "pretrain", {"data": {"tokenizer": {"vocab": 10}}},
     r"data.tokenizer: unknown key 'vocab'", ()),
    ("wrong type", "pretrain", {"pretrain": {"model": {"max_positions": "abc"}}},
     r"pretrain.model.max_positions: expected an integer, got 'abc'", ()),
    ("out of range", "pretrain", {"pretrain": {"training": {"max_steps": 0}}},
     r"pretrain.training.max_steps: must be an integer >= 1, got 0", ()),
    ("negative record count", "data_processing", {"data": {"max_records": -5}},
     r"data.max_records", ()),
    ("unknown choice", "pretrain", {"pretrain": {"training": {"scheduler": "cosin"}}},
     r"pretrain.training.scheduler: 'cosin' is not allowed \(did you mean 'cosine'\?\)", ()),
    ("unknown precision", "pretrain", {"pretrain": {"training": {"mixed_precision": "fp17"}}},
     r"pretrain.training.mixed_precision: 'fp17' is not allowed", ()),
    ("unknown data mode", "data_processing", {"data": {"mode": "chat"}},
     r"data.mode: 'chat' is not allowed", ()),
    ("tiny vocabulary", "data_processing", {"data": {"tokenizer": {"vocab_size": 10}}},
     r"data.tokenizer.vocab_size", ()),
    ("no workers", "data_processing", {"data": {"num_proc": 0}}, r"data.num_proc", ()),
    ("no validation split", "pretrain", {"data": {"validation_fraction": 0}},
     r"data.validation_fraction: 0 leaves no validation split, but (.*, )?pretrain.train_base_model", ()),
    ("validation fraction above 1", "pretrain", {"data": {"validation_fraction": 1.5}},
     r"data.validation_fraction", ()),
    ("seq_len beyond positions", "pretrain", {"data": {"seq_len": 512}},
     r"data.seq_len: 512 exceeds the 128 positions", ()),
    ("warmup beyond max_steps", "pretrain", {"pretrain": {"training": {"warmup_steps": 100}}},
     r"warmup_steps: 100 exceeds max_steps", ()),
    ("missing corpus", "pretrain", {"data": {"raw_path": "no/such.jsonl"}},
     r"data.raw_path: 'no/such.jsonl' does not exist", ()),
    ("corpus is a folder", "pretrain", {"data": {"raw_path": "{folder.jsonl}"}},
     r"data.raw_path: .* is a folder, not a file", ()),
    ("CSV corpus", "pretrain", {"data": {"raw_path": "{table.csv}"}},
     r"data.raw_path: cannot tell the format .* '.csv'", ()),
    ("gzip corpus", "pretrain", {"data": {"raw_path": "{corpus.jsonl.gz}"}},
     r"data.raw_path: cannot tell the format .* '.gz'", ()),
    ("cache folder is a file", "data_processing", {"data": {"cache_dir": "{a_file}"}},
     r"data.cache_dir: .* exists and is a file", ()),
    ("checkpoint folder is a file", "pretrain",
     {"pretrain": {"training": {"output_dir": "{a_file}"}}}, r"output_dir", ()),
    ("remote code without consent", "pretrain",
     {"pretrain": {"model": {"name_or_path": "{remote}"}},
      "data": {"tokenizer": {"name_or_path": "{remote}"}}},
     r"pretrain.model.name_or_path: .* ships its own Python code", ()),
    ("pretrained model with another tokenizer", "pretrain",
     {"pretrain": {"model": {"name_or_path": "{gpt2}"}}},
     r"pretrain.model.name_or_path: .* comes with its own tokenizer", ()),
    ("registry version that does not exist", "switchable",
     {"switchable": {"base": {"source": "registry", "registry_version": 999}}},
     r"switchable.base.registry_name / registry_version: .*999", ()),
    ("registry alias that does not exist", "switchable",
     {"switchable": {"base": {"source": "registry", "registry_version": "@staging"}}},
     r"switchable.base.registry_name / registry_version: .*staging", ()),
    ("unsupported bit width", "switchable", {"switchable": {"model": {"bit_widths": [2, 4, 9]}}},
     r"switchable.model.bit_widths", ()),
    ("more layers than the base", "switchable", {"switchable": {"model": {"n_layer": 5}}},
     r"switchable.model.n_layer: 5 exceeds the 2 layers", ()),
    ("layer-wise mix of the wrong length", "switchable",
     {"switchable": {"experiment": {"evaluation": {"layer_wise": {
         "mix": [{"attn_bits": 8, "mlp_bits": 4}] * 3}}}}},
     r"switchable.experiment.evaluation.layer_wise.mix: 3 layer entries", ()),
    ("tied head quantized alone", "switchable",
     {"switchable": {"model": {"quantize_lm_head": True}}},
     r"switchable.model: quantize_lm_head \(True\) and quantize_embeddings", ()),
    ("unknown strategy", "switchable",
     {"switchable": {"training": {"switch_strategy": "zigzag"}}},
     r"switchable.training.strategy: 'zigzag' is not allowed", ()),
    # Inside the corpus: only the reading node runs, and it writes nothing.
    ("binary corpus", "pretrain", {"data": {"raw_path": "{binary.jsonl}"}},
     r"binary.jsonl:1", (INGEST,)),
    ("arrays instead of objects", "pretrain", {"data": {"raw_path": "{arrays.jsonl}"}},
     r"arrays.jsonl:1", (INGEST,)),
    ("empty corpus", "pretrain", {"data": {"raw_path": "{empty.jsonl}"}},
     r"empty.jsonl.*empty", (INGEST,)),
    ("only empty texts", "pretrain", {"data": {"raw_path": "{empty_texts.jsonl}"}},
     r"empty_texts.jsonl:1", (INGEST,)),
    ("text of the wrong type", "pretrain", {"data": {"raw_path": "{wrong_type.jsonl}"}},
     r"wrong_type.jsonl:1", (INGEST,)),
    ("chat turn without a role", "pretrain",
     {"data": {"raw_path": "{chat.jsonl}", "mode": "instruction"}}, r"chat.jsonl:1", (INGEST,)),
]  # fmt: skip


class NodeSpy:
    def __init__(self) -> None:
        self.started: list[str] = []

    @hook_impl
    def before_node_run(self, node) -> None:
        self.started.append(node.name)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project copy after a good debug `pretrain` run; cwd and MLflow moved there."""
    root = copy_project(tmp_path_factory.mktemp("bad_input") / "project")
    files = _bad_files(root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        bootstrap_project(root)
        with KedroSession.create(project_path=root, env="debug") as session:
            session.run(pipeline_names=["pretrain"])
        yield root, files, mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
        while mlflow.active_run() is not None:
            mlflow.end_run()


def _fill(value, files: dict[str, str]):
    if isinstance(value, dict):
        return {k: _fill(v, files) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, files) for v in value]
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return files[value[1:-1]]
    return value


def _snapshot(root: Path, client) -> tuple[dict, list]:
    data = {
        str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted((root / "data").rglob("*"))
    }
    versions = sorted((v.name, v.version, v.source) for v in client.search_model_versions(""))
    return data, versions


@pytest.mark.parametrize(
    ("pipeline", "params", "message", "allowed"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_bad_input_stops_before_anything_is_written(project, pipeline, params, message, allowed):
    root, files, client = project
    before = _snapshot(root, client)
    spy = NodeSpy()
    with KedroSession.create(
        project_path=root, env="debug", runtime_params=_fill(params, files)
    ) as session:
        session._hook_manager.register(spy)
        with pytest.raises(Exception, match=message):
            session.run(pipeline_names=[pipeline])
    assert spy.started == list(allowed), "no node may run before the input is refused"
    assert _snapshot(root, client) == before, "nothing under data/ or in the registry changed"


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("pretrian.training.max_steps=5", "unknown key 'pretrian' (did you mean 'pretrain'?)"),
        ("data.validation_fraction=0", "data.validation_fraction: 0 leaves no validation split"),
        ("pretrain.model.max_positions=abc", "pretrain.model.max_positions: expected an integer"),
    ],
)
def test_the_command_exits_non_zero_with_a_clean_message(project, params, message):
    root, _, _ = project
    kedro = Path(sys.executable).parent / "kedro"
    done = subprocess.run(
        [str(kedro), "run", "--env=debug", "--pipeline=pretrain", f"--params={params}"],
        cwd=root,
        env={**os.environ, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0
    assert message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, "a refused parameter is a message, not a crash"
