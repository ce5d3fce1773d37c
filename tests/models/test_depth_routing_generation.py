"""Batched, left-padded, cached generation of routed models (issue 9, §2): a batch gives each
prompt what it gets alone, and padding does not change a sequence's logits or tokens (padding
tokens are never attended by a routed block's cache and stay out of DTF's moving average)."""

from __future__ import annotations

import pytest
import torch
from depth_routing_helpers import VOCAB, center_predictors, routed, tiny_qwen2
from torch.testing import assert_close

from router_pipelines.models.bundle import ModelBundle
from router_pipelines.serving.generation import greedy_continuations, left_padded

torch.set_num_threads(1)
PROMPTS = [[5, 9, 3, 17, 22, 8, 41, 2, 30], [12, 7], [33, 1, 60, 4, 4, 19]]


@pytest.fixture(scope="module")
def dense():
    return tiny_qwen2()


def _model(dense, model_type: str):
    model = routed(dense, model_type=model_type, capacity_gamma=0.5)
    if model_type == "dtf":
        for module in model.routed_modules():
            module.gate.ma_window = 3  # short: the padding would sit inside every window
    calibration = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(7))
    center_predictors(model, calibration)
    model.set_routing_mode("causal")
    return model


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
def test_padding_does_not_change_a_sequences_logits(dense, model_type):
    """Prefill and every cached decode step of a left-padded batch give each sequence the
    logits it gets alone, routed blocks computing some but not all of its tokens."""
    from transformers import DynamicCache

    model = _model(dense, model_type)
    input_ids, attention_mask = left_padded(PROMPTS, pad_id=_selected_pad_id(model))
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        batch = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
        ).logits
        computed = [
            module.last.selected[attention_mask.bool()] for module in model.routed_modules()
        ]
        assert all(0 < int(c.sum()) < len(c) for c in computed), "routing is not vacuous"
        step_ids = torch.tensor([[11], [50], [23]])
        mask = torch.cat([attention_mask, torch.ones(3, 1, dtype=torch.long)], dim=1)
        step = model(
            input_ids=step_ids,
            attention_mask=mask,
            position_ids=positions[:, -1:] + 1,
            past_key_values=cache,
            use_cache=True,
        ).logits
        for row, prompt in enumerate(PROMPTS):
            alone_cache = DynamicCache(config=model.config)
            ids = torch.tensor([prompt])
            alone = model(input_ids=ids, past_key_values=alone_cache, use_cache=True).logits
            assert_close(batch[row, -len(prompt) :], alone[0], rtol=1e-4, atol=1e-5)
            alone_step = model(
                input_ids=step_ids[row : row + 1], past_key_values=alone_cache, use_cache=True
            ).logits
            assert_close(step[row], alone_step[0], rtol=1e-4, atol=1e-5)


def _selected_pad_id(model) -> int:
    """A padding id some routed block computes (so a padded key in its cache would be seen)."""
    with torch.no_grad():
        for pad_id in range(VOCAB):
            input_ids, attention_mask = left_padded(PROMPTS, pad_id=pad_id)
            model(input_ids=input_ids, attention_mask=attention_mask)
            pads = ~attention_mask.bool()
            if any(bool(m.last.selected[pads].any()) for m in model.routed_modules()):
                return pad_id
    raise AssertionError("no padding id is ever computed: the test would be vacuous")


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
def test_a_batch_generates_what_each_prompt_generates_alone(dense, model_type):
    model = _model(dense, model_type)
    input_ids, attention_mask = left_padded(PROMPTS, pad_id=0)
    with torch.no_grad():
        together = model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
        )
        for row, prompt in enumerate(PROMPTS):
            ids = torch.tensor([prompt])
            alone = model.generate(input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0)
            assert together[row, input_ids.shape[1] :].tolist() == alone[0, len(prompt) :].tolist()
            # and with the cache off (recomputing every step, the 4-D mask path)
            uncached = model.generate(
                input_ids=ids, max_new_tokens=8, do_sample=False, pad_token_id=0, use_cache=False
            )
            assert torch.equal(uncached, alone)


def test_the_pyfunc_batches_and_keeps_the_order(dense):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t0")), pad_token="t0"
    )
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    bundle = ModelBundle(model=_model(dense, "mod"), tokenizer=tokenizer, metadata={})
    prompts = [" ".join(f"t{i}" for i in prompt) for prompt in PROMPTS] + ["t3 t4"]
    one_by_one = greedy_continuations(bundle, prompts, max_new_tokens=6, batch_size=1)
    batched = greedy_continuations(bundle, prompts, max_new_tokens=6, batch_size=3)
    assert batched == one_by_one
    assert all(len(text.split()) == 6 for text in batched)
    with pytest.raises(ValueError, match="batch_size"):
        greedy_continuations(bundle, prompts, max_new_tokens=6, batch_size=0)
