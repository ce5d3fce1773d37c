import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tiny_models import ListDataset, tiny_gpt2
from torch import nn
from transformers import GPT2LMHeadModel

from router_pipelines.evaluation.language_modeling import evaluate_language_model


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return tiny_gpt2(vocab_size=64)


def make_dataset(n_items: int = 5, seq_len: int = 12) -> ListDataset:
    generator = torch.Generator().manual_seed(1)
    items = []
    for index in range(n_items):
        input_ids = torch.randint(0, 64, (seq_len,), generator=generator)
        labels = input_ids.clone()
        attention_mask = torch.ones(seq_len, dtype=torch.long)
        n_pad = index % 3  # right padding: masked and not scored
        if n_pad:
            attention_mask[-n_pad:] = 0
            labels[-n_pad:] = -100
        labels[2] = -100  # a masked prompt position in the middle
        items.append({"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask})
    return ListDataset(items)


def hand_metrics(model, dataset, n_items=None) -> tuple[float, float, int]:
    """Loss and accuracy one sequence and one position at a time, in float64."""
    nll, correct, tokens = 0.0, 0, 0
    with torch.no_grad():
        for index in range(n_items or len(dataset)):
            item = dataset[index]
            logits = model(
                input_ids=item["input_ids"][None], attention_mask=item["attention_mask"][None]
            ).logits[0]
            log_probs = logits.double().log_softmax(dim=-1)
            for position in range(len(item["labels"]) - 1):
                target = int(item["labels"][position + 1])
                if target == -100:
                    continue
                nll -= float(log_probs[position, target])
                correct += int(int(logits[position].argmax()) == target)
                tokens += 1
    return nll / tokens, correct / tokens, tokens


def test_matches_hand_computation(model):
    model.eval()
    dataset = make_dataset()
    loss, accuracy, tokens = hand_metrics(model, dataset)
    result = evaluate_language_model(model, dataset, batch_size=2)  # last batch ragged
    # 5 sequences x 11 shifted positions - 5 masked prompt positions - (0+1+2+0+1) padding
    assert tokens == 46
    assert result["tokens"] == tokens
    torch.testing.assert_close(result["loss"], loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result["perplexity"], math.exp(loss), rtol=1e-5, atol=1e-6)
    assert result["token_accuracy"] == pytest.approx(accuracy)


def test_max_batches_limits_the_data(model):
    dataset = make_dataset()
    loss, _, tokens = hand_metrics(model, dataset, n_items=2)
    result = evaluate_language_model(model, dataset, batch_size=2, max_batches=1)
    assert result["tokens"] == tokens
    torch.testing.assert_close(result["loss"], loss, rtol=1e-5, atol=1e-6)


def test_restores_training_mode(model):
    model.train()
    evaluate_language_model(model, make_dataset(n_items=2), batch_size=2)
    assert model.training
    model.eval()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"batch_size": 0}, "batch_size"), ({"max_batches": 0}, "max_batches")],
)
def test_bad_arguments_raise(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        evaluate_language_model(model, make_dataset(n_items=1), **kwargs)


def test_empty_or_fully_masked_dataset_raises(model):
    with pytest.raises(ValueError, match="empty"):
        evaluate_language_model(model, ListDataset([]))
    item = make_dataset(n_items=1)[0]
    masked = {**item, "labels": torch.full_like(item["labels"], -100)}
    with pytest.raises(ValueError, match="-100"):
        evaluate_language_model(model, ListDataset([masked]))


# --- bits per byte -------------------------------------------------------------------------


class UniformLM(nn.Module):
    """Zero logits over ``vocab`` tokens: every prediction costs exactly ln(vocab) nats."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.anchor = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, self.vocab) + 0 * self.anchor
        return SimpleNamespace(logits=logits)


def test_bits_per_byte_golden_value_of_a_uniform_model():
    # 64 tokens: log2(64) = 6 bits per predicted token; 3 bytes per token -> exactly 2 bits/byte
    dataset = make_dataset()
    result = evaluate_language_model(UniformLM(64), dataset, token_bytes=np.full(64, 3))
    assert result["loss"] == pytest.approx(math.log(64))
    assert result["bits_per_byte"] == pytest.approx(2.0)


def test_bits_per_byte_is_the_nll_sum_over_the_bytes_of_the_predicted_tokens(model):
    model.eval()
    dataset = make_dataset()
    token_bytes = np.random.default_rng(0).integers(1, 5, size=64)  # 1..4 bytes per token
    loss, _, tokens = hand_metrics(model, dataset)
    predicted = [
        int(item["labels"][position + 1])
        for item in (dataset[i] for i in range(len(dataset)))
        for position in range(len(item["labels"]) - 1)
        if int(item["labels"][position + 1]) != -100
    ]
    assert len(predicted) == tokens
    n_bytes = int(token_bytes[predicted].sum())
    result = evaluate_language_model(model, dataset, batch_size=2, token_bytes=token_bytes)
    expected = loss * tokens / math.log(2) / n_bytes
    assert result["bits_per_byte"] == pytest.approx(expected, rel=1e-5)
    # a torch tensor works as well as a numpy array
    as_tensor = evaluate_language_model(
        model, dataset, batch_size=2, token_bytes=torch.tensor(token_bytes)
    )
    assert as_tensor["bits_per_byte"] == pytest.approx(result["bits_per_byte"], rel=1e-12)


def test_bits_per_byte_is_nan_without_token_bytes_or_bytes(model):
    dataset = make_dataset(n_items=2)
    assert math.isnan(evaluate_language_model(model, dataset)["bits_per_byte"])
    zero_bytes = evaluate_language_model(model, dataset, token_bytes=np.zeros(64, dtype=np.int64))
    assert math.isnan(zero_bytes["bits_per_byte"])


@pytest.mark.parametrize(
    ("token_bytes", "message"),
    [
        (np.ones((8, 8), dtype=np.int64), "1-D integer array"),
        (np.ones(64, dtype=np.float32), "1-D integer array"),
        (np.array([], dtype=np.int64), "1-D integer array"),
        (np.full(64, -1), "must be >= 0"),
        (np.ones(10, dtype=np.int64), "has 10 entries but the dataset holds token ids from"),
    ],
)
def test_bad_token_bytes_raise_naming_them(model, token_bytes, message):
    with pytest.raises(ValueError, match=rf"token_bytes: .*{message}"):
        evaluate_language_model(model, make_dataset(n_items=2), token_bytes=token_bytes)
