"""Correctness of Mixture-of-Depths and DTF routing (issue 9, §5): the bugs public
implementations have — look-ahead at generation, leaks across the batch, wrong rotary
positions, a doubled or scaled residual, k − 1 tokens."""

from __future__ import annotations

import pytest
import torch
from depth_routing_helpers import VOCAB, center_predictors, routed, tiny_qwen2
from torch.testing import assert_close

from router_pipelines.models.depth_routing import DepthRoutingConfig, capacity, selected_slots
from router_pipelines.models.depth_routing_lm import DepthRoutingLM
from router_pipelines.models.mod import MoDBlock

torch.set_num_threads(1)


def _ids(batch: int = 2, length: int = 16, seed: int = 3) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def dense():
    return tiny_qwen2()


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
@pytest.mark.parametrize(("gamma", "length"), [(0.25, 16), (0.125, 16), (0.5, 7), (1.0, 5)])
def test_exactly_k_tokens_are_selected(dense, model_type, gamma, length):
    model = routed(dense, model_type=model_type, capacity_gamma=gamma)
    with torch.no_grad():
        model(input_ids=_ids(3, length))
    k = capacity(gamma, length)
    assert k == int(gamma * length + 1e-9)
    for module in model.routed_modules():
        assert module.last.selected.sum(dim=1).tolist() == [k] * 3


def _block_inputs(dense, length=12):
    torch.manual_seed(5)
    x = torch.randn(2, length, dense.config.hidden_size)
    positions = torch.arange(length)[None]
    cos, sin = dense.model.rotary_emb(x, positions)
    return x, positions, (cos, sin)


def test_unselected_tokens_are_bit_identical_and_selected_get_x_plus_gate_delta(dense):
    """Residual exactness and rotary positions, against the dense block run on the gathered
    tokens with their true positions (and not positions 0..k-1)."""
    import copy

    block = copy.deepcopy(dense.model.layers[1])
    with torch.no_grad():  # peaky attention, so a wrong rotary position shows clearly
        block.self_attn.q_proj.weight.mul_(20)
        block.self_attn.k_proj.weight.mul_(20)
    torch.manual_seed(0)
    mod = MoDBlock(block, dense.config.hidden_size, DepthRoutingConfig(capacity_gamma=0.25)).eval()
    x, positions, (cos, sin) = _block_inputs(dense)
    with torch.no_grad():
        out = mod(x, attention_mask=None, position_ids=positions, position_embeddings=(cos, sin))
        selected = mod.last.selected
        gate = torch.sigmoid(mod.router(x).squeeze(-1))
        for b in range(2):
            where = selected[b].nonzero().squeeze(-1)
            assert len(where) == 3
            keep = ~selected[b]
            assert torch.equal(out[b, keep], x[b, keep])  # bit-identical
            sub = x[b : b + 1, where]
            true_pos = block(
                sub, None, where[None], position_embeddings=(cos[:, where], sin[:, where])
            )
            expected = sub + gate[b, where][None, :, None] * (true_pos - sub)
            assert_close(out[b : b + 1, where], expected, rtol=1e-5, atol=1e-6)
            first = (cos[:, : len(where)], sin[:, : len(where)])
            wrong_pos = block(sub, None, torch.arange(len(where))[None], position_embeddings=first)
            wrong = sub + gate[b, where][None, :, None] * (wrong_pos - sub)
            assert (
                out[b : b + 1, where] - wrong
            ).abs().max() > 100 * 1e-6  # 100x the match tolerance
            assert (out[b : b + 1, where] - (sub + true_pos)).abs().max() > 1e-1  # not x twice


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_gamma_one_with_unit_gate_equals_dense(attn):
    dense = tiny_qwen2(attn=attn)
    model = routed(dense, model_type="mod", capacity_gamma=1.0)
    for block in model.routed_modules():
        block.gate_activation = torch.ones_like
    ids = _ids()
    with torch.no_grad():
        assert_close(model(input_ids=ids).logits, dense(input_ids=ids).logits, rtol=1e-5, atol=1e-5)
    model.routed_modules()[0].gate_activation = torch.sigmoid
    with torch.no_grad():
        assert (model(input_ids=ids).logits - dense(input_ids=ids).logits).abs().max() > 1e-3


def test_dtf_with_gamma_one_and_unit_gate_equals_dense(dense):
    model = routed(dense, model_type="dtf", capacity_gamma=1.0)
    for pair in model.routed_modules():
        forward = pair.gate.forward
        pair.gate.forward = lambda *a, f=forward, **k: {**f(*a, **k), "gate": torch.ones(2, 16)}
    ids = _ids()
    with torch.no_grad():
        assert_close(model(input_ids=ids).logits, dense(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
@pytest.mark.parametrize("mode", ["topk", "causal"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_a_sequence_does_not_depend_on_the_rest_of_its_batch(dense, model_type, mode, attn):
    model = routed(tiny_qwen2(attn=attn), model_type=model_type, capacity_gamma=0.25)
    ids = _ids(4, 16)
    center_predictors(model, ids)
    model.set_routing_mode(mode)
    with torch.no_grad():
        together = model(input_ids=ids).logits
        if mode == "causal":  # the batch really has different counts per sequence (padding slots)
            counts = model.routed_modules()[0].last.selected.sum(dim=1)
            assert len(set(counts.tolist())) > 1
        for b in range(4):
            alone = model(input_ids=ids[b : b + 1]).logits
            assert_close(together[b : b + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
def test_causal_mode_does_not_look_ahead_and_topk_does(dense, model_type):
    model = routed(dense, model_type=model_type, capacity_gamma=0.25)
    ids = _ids(1, 16)
    changed = ids.clone()
    t = 7
    changed[0, t + 1 :] = (ids[0, t + 1 :] + 1 + torch.arange(8)) % VOCAB
    center_predictors(model, ids)
    with torch.no_grad():
        model.set_routing_mode("causal")
        model(input_ids=ids)
        for module in model.routed_modules():  # some tokens computed, some skipped
            assert 0 < int(module.last.selected.sum()) < 16
        a = model(input_ids=ids).logits
        chosen = [module.last.selected[:, : t + 1].clone() for module in model.routed_modules()]
        b = model(input_ids=changed).logits
        # the early tokens' routing decisions are exactly those of the unchanged sequence, and
        # their logits equal to float rounding: the routed blocks gather a different number
        # of later tokens, and the CPU matmul kernels may then sum in another order (6e-8
        # measured on an AVX2 machine; a look-ahead moves them by > 1e-4, see below)
        for before, module in zip(chosen, model.routed_modules(), strict=True):
            assert torch.equal(module.last.selected[:, : t + 1], before)
        assert_close(b[:, : t + 1], a[:, : t + 1], rtol=0, atol=1e-6)
        model.set_routing_mode("topk")
        a = model(input_ids=ids).logits
        # top-k looks ahead: some change of the future changes which early tokens are computed
        # (one particular change may happen to leave the early selection as it was)
        moved = []
        for shift in range(1, 9):
            other = ids.clone()
            other[0, t + 1 :] = (ids[0, t + 1 :] + shift + torch.arange(8)) % VOCAB
            moved.append(
                float((a[:, : t + 1] - model(input_ids=other).logits[:, : t + 1]).abs().max())
            )
        assert max(moved) > 1e-4, moved


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
def test_kv_cache_decoding_matches_full_recompute(dense, model_type):
    """Causal routing with a KV cache (each block caches only its selected tokens) gives the
    logits of recomputing the whole sequence."""
    from transformers import DynamicCache

    model = routed(dense, model_type=model_type, capacity_gamma=0.25)
    ids = _ids(1, 14)
    center_predictors(model, ids)
    model.set_routing_mode("causal")
    with torch.no_grad():
        full = model(input_ids=ids).logits
        for module in model.routed_modules():
            assert 0 < int(module.last.selected.sum()) < 14
        cache = DynamicCache(config=model.config)
        steps = [model(input_ids=ids[:, :6], past_key_values=cache, use_cache=True).logits]
        for t in range(6, 14):
            out = model(input_ids=ids[:, t : t + 1], past_key_values=cache, use_cache=True)
            steps.append(out.logits)
    assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
    generated = model.generate(input_ids=ids[:, :4], max_new_tokens=6, do_sample=False)
    recomputed = model.generate(
        input_ids=ids[:, :4], max_new_tokens=6, do_sample=False, use_cache=False
    )
    assert torch.equal(generated, recomputed)
    assert model.routing_mode == "causal"  # restored after generate


def test_selected_slots_keep_causal_order_and_pad():
    select = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    idx, valid = selected_slots(select)
    assert idx.tolist() == [[1, 3, 4], [0, 5, 5]]
    assert valid.tolist() == [[True, True, True], [True, False, False]]


def test_a_known_count_gives_the_counted_slots():
    """Top-k passes its ⌊γ·T⌋ instead of reading the count off the device."""
    select = torch.tensor([[0, 1, 0, 1, 1], [1, 0, 1, 1, 0]], dtype=torch.bool)
    counted, known = selected_slots(select), selected_slots(select, 3)
    assert all(torch.equal(a, b) for a, b in zip(counted, known, strict=True))


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
def test_save_and_load_round_trip(tmp_path, dense, model_type):
    model = routed(dense, model_type=model_type, capacity_gamma=0.25)
    model.save_pretrained(tmp_path)
    loaded = DepthRoutingLM.from_pretrained(tmp_path)
    ids = _ids()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, model(input_ids=ids).logits)
    assert loaded.routing_config == model.routing_config


def test_gradients_reach_router_gate_and_blocks(dense):
    model = routed(dense, model_type="dtf", capacity_gamma=0.5).train()
    ids = _ids()
    model(input_ids=ids, labels=ids).loss.backward()
    pair = model.routed_modules()[0]
    assert pair.gate.beta_ce.grad is not None and pair.gate.beta_ce.grad != 0
    assert pair.routing.block.mlp.down_proj.weight.grad.abs().sum() > 0
    assert pair.routing.predictor[0].weight.grad is None  # predictor learns only from its loss
    mod = routed(dense, model_type="mod").train()
    mod(input_ids=ids, labels=ids).loss.backward()
    assert mod.routed_modules()[0].router.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"capacity_gamma": 0.0}, "capacity_gamma: 0.0 is outside (0, 1]"),
        ({"capacity_gamma": 1.5}, "capacity_gamma: 1.5 is outside (0, 1]"),
        ({"model_type": "moe"}, "model_type"),
        ({"causal_router": "oracle"}, "causal_router"),
    ],
)
def test_bad_config_names_the_value(config, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DepthRoutingConfig(**config)


def test_bad_layers_and_architectures_name_the_value(dense):
    import copy

    from tiny_models import tiny_gpt2

    from router_pipelines.models.depth_routing_lm import make_depth_routing

    with pytest.raises(ValueError, match=r"routed_layers: \[4\] out of range; the model has 4"):
        make_depth_routing(copy.deepcopy(dense), DepthRoutingConfig(routed_layers=[1, 4]))
    with pytest.raises(ValueError, match="3 blocks cannot pair"):
        make_depth_routing(tiny_qwen2(num_layers=3), DepthRoutingConfig(model_type="dtf"))
    with pytest.raises(ValueError, match=r"GPT2LMHeadModel has \['GPT2Block'\] blocks"):
        make_depth_routing(tiny_gpt2(), DepthRoutingConfig())


@pytest.mark.parametrize("model_type", ["mod", "dtf"])
def test_gradient_checkpointing_gives_the_same_gradients(dense, model_type):
    grads = []
    for checkpointing in (False, True):
        model = routed(dense, model_type=model_type, capacity_gamma=0.25).train()
        if checkpointing:
            model.activation_checkpointing_enable()
            routed_block = model.routed_modules()[0].routing.block  # the wrapped decoder layer
            assert routed_block.gradient_checkpointing is True
        ids = _ids()
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-6)
