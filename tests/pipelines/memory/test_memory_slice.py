"""The memory namespace on an in-memory catalog: chat corpus → chat tokens (assistant-only labels,
the base's tokenizer) → memory adapter → evaluation, with the seed's chat shapes read offline."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from kedro.io import DataCatalog, MemoryDataset
from kedro.runner import SequentialRunner
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.constants import IGNORE_INDEX
from router_pipelines.data.token_store import TokenBlocks
from router_pipelines.data.tokenizer import train_bpe_tokenizer
from router_pipelines.data.torch_dataset import TokenBlockDataset
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.memory import MemoryAdapter
from router_pipelines.pipelines.memory import create_pipeline

CONF = Path(__file__).resolve().parents[3] / "conf"
CHATS = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What does function number {i} do?"},
            {"role": "assistant", "content": f"It returns {i} plus {i}."},
        ]
    }
    for i in range(40)
]


class KeptDataset(MemoryDataset):
    def _release(self) -> None:
        pass


@pytest.fixture(scope="module")
def base_model() -> ModelBundle:
    texts = [m["content"] for chat in CHATS for m in chat["messages"]] * 3
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=len(tokenizer),
        n_positions=64,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return ModelBundle(GPT2LMHeadModel(config), tokenizer, {"family": "causal_lm"})


def _params(tmp_path: Path, raw_path: str, **chat_data) -> dict:
    params = yaml.safe_load((CONF / "base/parameters_memory.yml").read_text())["memory"]
    params = copy.deepcopy(params)
    params["adapter"].update(memory_layers=[1], num_memory_tokens=32, chapter_size=8, num_heads=2)
    params["chat_data"].update(
        raw_path=raw_path,
        seq_len=48,
        validation_fraction=0.25,
        cache_dir=str(tmp_path / "cache"),
        **chat_data,
    )
    params["training"].update(
        output_dir=str(tmp_path / "ckpt"),
        max_steps=4,
        batch_size=4,
        warmup_steps=1,
        eval_steps=2,
        eval_max_batches=2,
        save_steps=2,
        logging_steps=1,
        progress_bar=False,
    )
    params["evaluation"]["max_batches"] = 2
    return params


OUTPUTS = (
    "chat_train_tokens",
    "chat_validation_tokens",
    "chat_data_report",
    "model",
    "training_summary",
    "evaluation",
    "evaluation_summary",
    "registration",
)


def _text_tokens(base_model: ModelBundle) -> TokenBlocks:
    rows = (np.arange(16)[:, None] + np.arange(32)[None, :]) % len(base_model.tokenizer)
    return TokenBlocks.from_arrays(rows, fingerprint="text-val")


def _run(params: dict, base_model: ModelBundle, nodes: list[str]) -> dict:
    catalog = DataCatalog({f"memory.{name}": KeptDataset() for name in OUTPUTS})
    catalog["pretrain.model"] = base_model
    catalog["validation_tokens"] = _text_tokens(base_model)
    for group, values in params.items():
        catalog[f"params:memory.{group}"] = values
    pipeline = create_pipeline().only_nodes(*(f"memory.{n}" for n in nodes))
    SequentialRunner().run(pipeline, catalog)
    produced = set().union(*(node.outputs for node in pipeline.nodes))
    return {
        name: catalog[f"memory.{name}"].load() for name in OUTPUTS if f"memory.{name}" in produced
    }


def _assistant_only(tokens: TokenBlocks, tokenizer) -> list[str]:
    """The text of the supervised positions of each row (labels are the targets, unshifted)."""
    texts = []
    dataset = TokenBlockDataset(tokens)
    for index in range(len(dataset)):
        row = dataset[index]
        ids, labels = row["input_ids"].numpy(), row["labels"].numpy()
        kept = labels != IGNORE_INDEX
        assert (ids[kept] == labels[kept]).all()
        texts.append(tokenizer.decode(ids[kept].tolist()))
    return texts


def test_slice_tokenizes_chats_trains_and_evaluates(tmp_path, base_model):
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(chat) + "\n" for chat in CHATS))
    params = _params(tmp_path, str(path))
    nodes = [
        "ingest_chat_corpus",
        "split_chat_corpus",
        "tokenize_chat_corpus",
        "train_memory",
        "evaluate_memory",
    ]
    out = _run(params, base_model, nodes)
    report = out["chat_data_report"]
    assert report["mode"] == "instruction" and report["train_rows"] == 30
    assert report["train_truncated"] == 0
    supervised = _assistant_only(out["chat_train_tokens"], base_model.tokenizer)
    eos = base_model.tokenizer.eos_token
    # Only the assistant's reply and its end-of-turn token carry a label.
    assert all(text.startswith("It returns ") and text.endswith(eos) for text in supervised)
    assert not any("What does" in text or "Be brief" in text for text in supervised)

    model = out["model"].model
    assert isinstance(model, MemoryAdapter) and model.layer_indices == [1]
    assert out["model"].family == "memory"
    frame = out["evaluation"]
    assert set(frame["model"]) == {"base", "memory"} and set(frame["split"]) == {"text", "chat"}
    summary = out["evaluation_summary"]
    assert summary["chat_validation_loss"] < summary["base_chat_validation_loss"]
    assert np.isfinite(summary["chat_bits_per_byte"])


@pytest.mark.parametrize(
    ("rows", "text_field", "split"),
    [
        (CHATS, "messages", "train_sft"),  # HuggingFaceH4/ultrachat_200k
        (
            [
                {"instruction": f"Add {i}", "input": "", "output": f"It returns {i}."}
                for i in range(40)
            ],
            ["instruction", "input", "output"],  # sahil2801/CodeAlpaca-20k
            "train",
        ),
    ],
)
def test_the_seeds_hub_chat_datasets_by_name_offline(
    tmp_path, base_model, monkeypatch, rows, text_field, split
):
    calls = []

    def fake_load(path, **kwargs):  # stands in for the hub: tests never reach the network
        calls.append((path, kwargs))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    name = (
        "HuggingFaceH4/ultrachat_200k" if text_field == "messages" else "sahil2801/CodeAlpaca-20k"
    )
    params = _params(
        tmp_path, "unused.jsonl", hub_dataset=name, hub_split=split, text_field=text_field
    )
    out = _run(
        params, base_model, ["ingest_chat_corpus", "split_chat_corpus", "tokenize_chat_corpus"]
    )
    assert calls[0][0] == name and calls[0][1]["split"] == split
    supervised = _assistant_only(out["chat_train_tokens"], base_model.tokenizer)
    assert supervised and all(text.startswith("It returns ") for text in supervised)


def test_the_champion_rescoring_matches_the_evaluation_of_the_same_model(
    tmp_path, base_model, mlflow_store, monkeypatch
):
    """promotion re-scores a memory champion with ``rescore_memory``: on the model a slice run
    just evaluated and registered, loaded back from the registry (LoRA merged into the base), it
    gives the registration's metrics, logs nothing, and refuses a model of another tokenizer or
    one whose trainable parameters it cannot confirm."""
    import mlflow
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from router_pipelines import tracking
    from router_pipelines.pipelines.memory.nodes import REGISTERED_METRICS, rescore_memory
    from router_pipelines.promotion import load_registered

    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps(chat) + "\n" for chat in CHATS))
    params = _params(tmp_path, str(path))
    params["lora"].update(enabled=True, r=4)
    nodes = [
        "ingest_chat_corpus",
        "split_chat_corpus",
        "tokenize_chat_corpus",
        "train_memory",
        "evaluate_memory",
        "register_memory",
    ]
    with mlflow.start_run():
        out = _run(params, base_model, nodes)
    registration = out["registration"]
    summary = out["training_summary"]
    assert summary["lora_parameters"] > 0, "LoRA trained: the merged save drops its tensors"
    champion = load_registered(
        mlflow.MlflowClient().get_model_version(registration["name"], registration["version"])
    )
    assert not any("lora_" in name for name, _ in champion.model.named_parameters())

    logged = []
    for name in ("log_metrics", "log_figure", "log_table"):
        monkeypatch.setattr(tracking, name, lambda *args, **kwargs: logged.append(args))
    text = _text_tokens(base_model)
    inputs = (out["chat_validation_tokens"], params["evaluation"], params["training"])
    rescored = rescore_memory(champion, base_model, text, *inputs)
    assert set(rescored) == set(REGISTERED_METRICS) == set(registration["metrics"])
    assert rescored == pytest.approx(registration["metrics"], rel=1e-6)
    assert rescored["trainable_parameters"] == summary["trainable_parameters"]
    assert rescored["trainable_parameters"] > summary["memory_parameters"]
    assert not logged, "the champion's numbers are not this run's metrics"

    other = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "b": 1}, unk_token="a")),
        pad_token="a",
    )
    other_data = ModelBundle(base_model.model, other, {"family": "causal_lm"})
    with pytest.raises(ValueError, match="its tokenizer .* is not the data's"):
        rescore_memory(champion, other_data, text, *inputs)
    champion.metadata["lora"]["r"] = 8  # not the LoRA it was trained with
    with pytest.raises(ValueError, match="records .* trainable parameters, but its rebuilt"):
        rescore_memory(champion, base_model, text, *inputs)
    del champion.metadata["lora"]
    with pytest.raises(ValueError, match="records no LoRA settings"):
        rescore_memory(champion, base_model, text, *inputs)
