"""The router model: label tokens, mean-initialised rows, P(score) and P(strong) from logits."""

from __future__ import annotations

import pytest
import torch
from tiny_models import char_tokenizer, tiny_gpt2, tiny_llama

from router_pipelines.families.query_router import RouterExamples
from router_pipelines.families.query_router.loss import make_router_loss
from router_pipelines.models.bundle import ModelBundle, load_bundle, save_bundle
from router_pipelines.models.query_router import (
    LABEL_TOKENS,
    add_label_tokens,
    answer_label_logits,
    expected_score,
    label_token_ids,
    p_strong,
    predict_scores,
    score_distribution,
)


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_label_tokens_are_single_tokens_with_mean_rows(build):
    torch.manual_seed(0)
    model, tokenizer = build(), char_tokenizer()
    old = model.get_input_embeddings().weight[: len(tokenizer)].clone()
    ids = add_label_tokens(model, tokenizer)
    assert ids == list(range(len(tokenizer) - 5, len(tokenizer)))
    for label, token_id in zip(LABEL_TOKENS, ids, strict=True):
        assert tokenizer.encode(f"ab{label}c", add_special_tokens=False)[2] == token_id
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == max(128, len(tokenizer))
    # Every label row is the mean of the model's other rows; the others are unchanged.
    others = [i for i in range(weight.shape[0]) if i not in ids]
    mean = weight[others].mean(0)
    for token_id in ids:
        torch.testing.assert_close(weight[token_id], mean)
    torch.testing.assert_close(weight[: len(old)], old)
    assert add_label_tokens(model, tokenizer) == ids  # idempotent


def test_resizing_a_full_vocabulary_appends_mean_rows():
    torch.manual_seed(0)
    model, tokenizer = tiny_gpt2(vocab_size=28), char_tokenizer()
    mean = model.get_input_embeddings().weight.mean(0).detach().clone()
    ids = add_label_tokens(model, tokenizer)
    assert ids == [28, 29, 30, 31, 32]
    weight = model.get_input_embeddings().weight
    assert weight.shape[0] == 33
    torch.testing.assert_close(weight[30], mean)


def test_untied_head_rows_are_mean_initialised():
    torch.manual_seed(0)
    model = tiny_llama()
    ids = add_label_tokens(model, char_tokenizer())
    head = model.get_output_embeddings().weight
    others = [i for i in range(head.shape[0]) if i not in ids]
    torch.testing.assert_close(head[ids[-1]], head[others].mean(0))
    assert not torch.equal(head[ids[-1]], model.get_input_embeddings().weight[ids[-1]])


def test_label_tokens_round_trip_through_save_and_load(tmp_path):
    torch.manual_seed(0)
    model, tokenizer = tiny_gpt2(), char_tokenizer()
    ids = add_label_tokens(model, tokenizer)
    save_bundle(ModelBundle(model, tokenizer, {"family": "query_router"}), tmp_path / "router")
    loaded = load_bundle(tmp_path / "router")
    assert label_token_ids(loaded.tokenizer) == ids
    torch.testing.assert_close(
        loaded.model.get_input_embeddings().weight, model.get_input_embeddings().weight
    )


def test_label_token_ids_refuses_a_tokenizer_without_them():
    with pytest.raises(ValueError, match=r"label token '\[\[1\]\]': encodes to 5 tokens"):
        label_token_ids(char_tokenizer())


def test_score_distribution_and_p_strong_match_a_hand_computation():
    logits = torch.zeros(1, 10)
    label_ids = [5, 6, 7, 8, 9]
    logits[0, label_ids] = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0])
    logits[0, 0] = 100.0  # a non-label token never enters the softmax
    exps = [2.718281828**k for k in range(5)]
    total = sum(exps)
    dist = score_distribution(logits[:, label_ids])
    torch.testing.assert_close(dist[0], torch.tensor([e / total for e in exps]))
    torch.testing.assert_close(p_strong(dist)[0], torch.tensor(1 - (exps[3] + exps[4]) / total))
    expected = sum((k + 1) * e for k, e in enumerate(exps)) / total
    torch.testing.assert_close(expected_score(dist)[0], torch.tensor(expected))


def test_loss_mask_covers_only_the_label_token():
    torch.manual_seed(0)
    model, tokenizer = tiny_gpt2(), char_tokenizer()
    ids = add_label_tokens(model, tokenizer)
    examples = RouterExamples(["abc", "hello"], [2, 5], tokenizer, max_length=32)
    assert examples.input_ids.shape == (2, 6)
    labels = examples.labels
    assert (labels != -100).sum(dim=1).tolist() == [1, 1]
    assert labels[0, 3] == ids[1] and labels[1, 5] == ids[4]
    assert (
        examples.input_ids[0, 3] == ids[1]
        and examples.attention_mask[0].tolist() == [1] * 4 + [0] * 2
    )
    batch = {
        "input_ids": examples.input_ids,
        "labels": examples.labels,
        "attention_mask": examples.attention_mask,
    }
    loss, metrics = make_router_loss(ids)(model, batch, 0)
    logits = model(input_ids=examples.input_ids, attention_mask=examples.attention_mask).logits
    # The loss is the 5-way cross-entropy at the answer position (the token before the label).
    by_hand = torch.stack(
        [
            torch.nn.functional.cross_entropy(logits[0, 2, ids], torch.tensor(1)),
            torch.nn.functional.cross_entropy(logits[1, 4, ids], torch.tensor(4)),
        ]
    ).mean()
    torch.testing.assert_close(loss, by_hand)
    torch.testing.assert_close(metrics["label_nll"], by_hand)
    assert int(metrics["tokens"]) == 2
    # predict_scores reads the same position: the distribution at the prompt's last token.
    dist = predict_scores(model, tokenizer, ["abc", "hello"])
    torch.testing.assert_close(dist[0], torch.softmax(logits[0, 2, ids], -1))
    torch.testing.assert_close(dist[1], torch.softmax(logits[1, 4, ids], -1))


def test_examples_refuse_a_label_outside_1_to_5_and_too_long_prompts():
    model, tokenizer = tiny_gpt2(), char_tokenizer()
    add_label_tokens(model, tokenizer)
    with pytest.raises(ValueError, match="label 6 is outside 1..5"):
        RouterExamples(["abc"], [6], tokenizer, max_length=32)
    with pytest.raises(ValueError, match="exceed the router model's 4 positions"):
        RouterExamples(["abcdef"], [3], tokenizer, max_length=4)


def _full_answer_logits(model, input_ids, attention_mask):
    """The reference: full-vocabulary logits (B, V) after each row's last real token."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
    last = attention_mask.sum(dim=1) - 1
    return logits[torch.arange(logits.shape[0]), last]


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
def test_label_logits_at_the_answer_position_equal_the_full_logits(build):
    """The fast path (hidden state at the answer position, LM head on the five label rows only)
    gives exactly the full-vocabulary logits' label columns, for right-padded batches."""
    torch.manual_seed(0)
    model, tokenizer = build(), char_tokenizer()
    ids = add_label_tokens(model, tokenizer)
    with torch.no_grad():  # make the label rows differ so a wrong row would show
        model.get_output_embeddings().weight[ids] += torch.randn(5, model.config.hidden_size)
    examples = RouterExamples(["abc", "hello there", "x"], [1, 3, 5], tokenizer, max_length=32)
    prompt_mask = examples.attention_mask.clone()
    prompt_mask[torch.arange(3), examples.attention_mask.sum(1) - 1] = 0  # drop the label token
    fast = answer_label_logits(model, examples.input_ids, prompt_mask, ids)
    full = _full_answer_logits(model, examples.input_ids, prompt_mask)[:, ids]
    torch.testing.assert_close(fast, full.float(), rtol=1e-5, atol=1e-5)
    # The training loss reads the same logits through the label mask.
    batch = {
        "input_ids": examples.input_ids,
        "labels": examples.labels,
        "attention_mask": examples.attention_mask,
    }
    loss, _ = make_router_loss(ids)(model, batch, 0)
    expected = torch.nn.functional.cross_entropy(full.float(), torch.tensor([0, 2, 4]))
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)
