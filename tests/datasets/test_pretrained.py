import time

import pytest
import torch
from kedro.io.core import Version
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.datasets import PretrainedModelDataset, PretrainedTokenizerDataset
from router_pipelines.models.bundle import ModelBundle


@pytest.fixture
def bundle(char_tokenizer):
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=28, n_positions=16)
    )
    return ModelBundle(model=model, tokenizer=char_tokenizer, metadata={"note": "x"})


def test_versioned_model_dataset_never_overwrites_and_loads_newest(tmp_path, bundle):
    path = tmp_path / "base_lm"
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)
    first = next(path.iterdir())
    time.sleep(0.01)  # versions are timestamps
    with torch.no_grad():
        bundle.model.transformer.wte.weight.add_(1.0)
    PretrainedModelDataset(str(path), version=Version(None, None)).save(bundle)
    assert len(list(path.iterdir())) == 2
    assert not any(p.name.startswith(".") for p in path.iterdir()), "no temp folder left behind"

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


def test_tokenizer_dataset_round_trip_and_replace(tmp_path, bundle):
    dataset = PretrainedTokenizerDataset(str(tmp_path / "tok"))
    assert not dataset.exists()
    dataset.save(bundle.tokenizer)
    dataset.save(bundle.tokenizer)  # replaces in place
    assert dataset.exists()
    assert dataset.load()("abc")["input_ids"] == [2, 3, 4]
