import time
from pathlib import Path

import pytest
import torch
from kedro.io.core import DatasetError, Version

from router_pipelines.datasets import (
    ModelVersionsDataset,
    OptionalModelDataset,
    PretrainedModelDataset,
    PretrainedTokenizerDataset,
)


def test_versioned_model_dataset_never_overwrites_and_loads_newest(tmp_path, bundle):
    path = tmp_path / "base_lm"
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)
    first = next(path.iterdir())
    time.sleep(0.01)  # versions are timestamps
    with torch.no_grad():
        bundle.model.transformer.wte.weight.add_(1.0)
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)
    assert len(list(path.iterdir())) == 2
    assert not any(p.name.startswith(".") for p in path.rglob("*")), "no temp folder left behind"

    loaded = PretrainedModelDataset(str(path), version=Version(None, None)).load()
    torch.testing.assert_close(
        loaded.model.transformer.wte.weight, bundle.model.transformer.wte.weight
    )
    assert loaded.metadata == {"family": "causal_lm", "note": "x"}
    assert loaded.tokenizer.get_vocab() == bundle.tokenizer.get_vocab()
    pinned = PretrainedModelDataset(str(path), version=Version(first.name, None)).load()
    assert not torch.equal(pinned.model.transformer.wte.weight, bundle.model.transformer.wte.weight)


def test_failed_save_leaves_nothing_half_written(tmp_path, bundle, monkeypatch):
    path = tmp_path / "base_lm"

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(bundle.tokenizer, "save_pretrained", broken)
    dataset = PretrainedModelDataset(str(path), version=Version(None, None))
    with pytest.raises(Exception, match="disk full"):
        dataset.save(bundle)
    leftovers = [p for p in path.rglob("*") if p.is_file()]
    assert leftovers == []
    assert not dataset.exists()


def test_reused_model_is_not_saved_twice(tmp_path, bundle):
    path = tmp_path / "base_lm"
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)
    loaded = PretrainedModelDataset(str(path), version=Version(None, None)).load()
    again = PretrainedModelDataset(str(path), version=Version(None, None))
    again.save(loaded)
    assert len(list(path.iterdir())) == 1
    assert again.load().source_dir == loaded.source_dir


def test_a_reused_older_version_is_what_the_same_run_loads_back(tmp_path, bundle):
    path = tmp_path / "best_model"
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)
    older = PretrainedModelDataset(str(path), version=Version(None, None)).load()
    time.sleep(0.01)  # versions are timestamps
    with torch.no_grad():
        bundle.model.transformer.wte.weight.add_(1.0)
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)  # newer one

    dataset = PretrainedModelDataset(str(path), version=Version(None, None))
    dataset.save(older)  # a provider reused the older version
    assert len(list(path.iterdir())) == 2
    reloaded = dataset.load()
    assert reloaded.source_dir == older.source_dir
    torch.testing.assert_close(
        reloaded.model.transformer.wte.weight, older.model.transformer.wte.weight
    )


def test_tokenizer_dataset_round_trip_and_replace(tmp_path, bundle):
    dataset = PretrainedTokenizerDataset(str(tmp_path / "tok"))
    assert not dataset.exists()
    dataset.save(bundle.tokenizer)
    dataset.save(bundle.tokenizer)  # replaces in place
    assert dataset.exists()
    assert dataset.load()("abc")["input_ids"] == [2, 3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tok"], "no temp or old folder left"


def test_versioned_tokenizer_keeps_every_version(tmp_path, bundle):
    path = tmp_path / "tokenizer"
    dataset = PretrainedTokenizerDataset(str(path), version=Version(None, None))
    assert not dataset.exists()
    dataset.save(bundle.tokenizer)
    first = next(path.iterdir())
    time.sleep(0.01)
    bundle.tokenizer.add_tokens(["<new>"])
    PretrainedTokenizerDataset(str(path), version=Version(None, None)).save(bundle.tokenizer)
    assert len(list(path.iterdir())) == 2
    assert (first / "tokenizer" / "tokenizer_config.json").is_file()  # <path>/<version>/<name>

    newest = PretrainedTokenizerDataset(str(path), version=Version(None, None)).load()
    assert "<new>" in newest.get_vocab()
    pinned = PretrainedTokenizerDataset(str(path), version=Version(first.name, None)).load()
    assert "<new>" not in pinned.get_vocab()


def test_failed_tokenizer_save_keeps_the_previous_one(tmp_path, bundle, monkeypatch):
    dataset = PretrainedTokenizerDataset(str(tmp_path / "tok"))
    dataset.save(bundle.tokenizer)

    def half_written(directory, *args, **kwargs):
        (Path(directory) / "tokenizer_config.json").write_text("{")
        raise OSError("killed")

    monkeypatch.setattr(bundle.tokenizer, "save_pretrained", half_written)
    with pytest.raises(DatasetError, match="killed"):
        dataset.save(bundle.tokenizer)
    assert dataset.load()("abc")["input_ids"] == [2, 3, 4]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_an_unchanged_tokenizer_is_not_saved_as_another_version(tmp_path, char_tokenizer):
    from kedro.io.core import Version

    from router_pipelines.datasets import PretrainedTokenizerDataset

    root = tmp_path / "tokenizer"
    PretrainedTokenizerDataset(str(root), version=Version(None, None)).save(char_tokenizer)
    again = PretrainedTokenizerDataset(str(root), version=Version(None, None))
    again.save(char_tokenizer)  # a warm run: the same tokenizer
    assert len(list(root.iterdir())) == 1
    assert again.load().get_vocab() == char_tokenizer.get_vocab()
    char_tokenizer.add_tokens(["<new>"])
    PretrainedTokenizerDataset(str(root), version=Version(None, None)).save(char_tokenizer)
    assert len(list(root.iterdir())) == 2, "a changed tokenizer is a new version"


def test_model_and_tokenizer_previews_read_json_files_only(tmp_path, bundle):
    """Kedro-Viz's JSON previews of a saved model and tokenizer: family, architecture,
    training summary and files; vocabulary size and special tokens. Nothing before a save."""
    import inspect
    import json

    from kedro.io.core import Version

    from router_pipelines.datasets import (
        PretrainedModelDataset,
        PretrainedTokenizerDataset,
    )

    models = PretrainedModelDataset(str(tmp_path / "lm"), version=Version(None, None))
    assert models.preview() is None, "not saved yet"
    bundle.metadata = {"family": "causal_lm", "training": {"origin": "train", "global_step": 3}}
    models.save(bundle)
    (weights,) = (tmp_path / "lm").glob("*/lm/model.safetensors")
    weights.write_bytes(b"garbage")  # a preview that loaded the weights would fail
    assert inspect.signature(models.preview).return_annotation == "JSONPreview"
    shown = json.loads(
        PretrainedModelDataset(str(tmp_path / "lm"), version=Version(None, None)).preview()
    )
    assert shown["family"] == "causal_lm" and shown["training"]["global_step"] == 3
    assert shown["architecture"]["n_layer"] == 1 and "model.safetensors" in shown["files"]
    assert shown["version"] == weights.parent.parent.name

    tokenizers = PretrainedTokenizerDataset(str(tmp_path / "tok"))
    assert tokenizers.preview() is None
    tokenizers.save(bundle.tokenizer)
    shown = json.loads(tokenizers.preview())
    assert shown["vocab_size"] == len(bundle.tokenizer.get_vocab())
    assert "tokenizer_config.json" in shown["files"] and shown["version"] is None, "unversioned"


def test_a_skipped_model_is_saved_as_a_version_and_never_loads_an_older_model(tmp_path, bundle):
    path = tmp_path / "dense"
    OptionalModelDataset(str(path), version=Version(None, None)).save(bundle)
    time.sleep(0.01)  # versions are timestamps
    OptionalModelDataset(str(path), version=Version(None, None)).save({"enabled": False})
    assert len(list(path.iterdir())) == 2
    assert OptionalModelDataset(str(path), version=Version(None, None)).load() == {"enabled": False}
    # the store of saved models lists only the version that holds a model
    assert len(ModelVersionsDataset(str(path)).load().versions()) == 1
    time.sleep(0.01)
    OptionalModelDataset(str(path), version=Version(None, None)).save(bundle)
    loaded = OptionalModelDataset(str(path), version=Version(None, None)).load()
    assert loaded.metadata == {"family": "causal_lm", "note": "x"}


def test_an_optional_model_refuses_a_dict_that_is_not_a_skip(tmp_path):
    dataset = OptionalModelDataset(str(tmp_path / "dense"), version=Version(None, None))
    with pytest.raises(DatasetError, match=r"dense: expected a model bundle or a skip marker"):
        dataset.save({"enabled": True})
    assert not (tmp_path / "dense").exists() or not list((tmp_path / "dense").iterdir())
