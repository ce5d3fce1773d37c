import math

import pytest
import torch
from tiny_models import ListDataset, tiny_gpt2
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
