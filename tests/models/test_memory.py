"""The Mixture-of-Chapters memory adapter: exact start, routing, options, save/load, bad shapes."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_gpt2, tiny_llama

from router_pipelines.models.memory import (
    LoraSettings,
    MemoryAdapter,
    MemoryConfig,
    apply_lora,
    freeze_base,
    load_memory_model,
)

SMALL = {"num_memory_tokens": 32, "chapter_size": 8, "top_k": 2, "num_heads": 2}


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 128, (3, 12), generator=generator)
    mask = torch.ones_like(ids)
    mask[2, 8:] = 0
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("build", [tiny_gpt2, tiny_llama])
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"shared_chapters": 1},
        {"bank_rank": 4, "projection_rank": 8, "memory_dim": 16},
        {"router_input": "standardised", "router_noise": 1.0},
    ],
)
def test_zero_initialised_output_gives_the_base_logits_at_step_0(build, options):
    torch.manual_seed(0)
    base = build()
    batch = _batch()
    expected = base(**batch).logits
    model = MemoryAdapter(base, MemoryConfig(**SMALL, **options)).eval()
    out = model(**batch)
    assert torch.equal(out.logits, expected)
    assert len(out.routing) == 2  # memory at every block by default
    assert out.routing[0]["logits"].dtype == torch.float32
    assert out.routing[0]["indices"].shape == (3, 2)


def test_the_memory_changes_the_output_once_w_o_is_not_zero():
    torch.manual_seed(0)
    base = tiny_gpt2()
    batch = _batch()
    expected = base(**batch).logits
    model = MemoryAdapter(base, MemoryConfig(**SMALL, memory_layers=[1])).eval()
    torch.nn.init.normal_(model.memory["layers"]["1"].o_proj.weight, std=0.5)
    assert not torch.allclose(model(**batch).logits, expected)
    assert model.layer_indices == [1]


def test_top_k_limits_attention_to_the_chosen_chapters_tokens():
    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL, memory_layers=[0])).eval()
    layer = model.memory["layers"]["0"]
    torch.nn.init.normal_(layer.o_proj.weight, std=0.5)
    batch = {k: v[:1] for k, v in _batch().items()}
    with torch.no_grad():
        out = model(**batch)
        chosen = set(out.routing[0]["indices"][0].tolist())
        unchosen = sorted(set(range(4)) - chosen)
        bank = model.memory["bank"].tokens.view(4, 8, -1)
        # Memory layer 0 is the only one and routes on its block's output, so changing an
        # unchosen chapter's tokens changes neither the routing nor any logit.
        bank[unchosen[0]] += 3.0
        assert torch.equal(model(**batch).logits, out.logits)
        bank[sorted(chosen)[0]] += 3.0
        changed = model(**batch)
    assert set(changed.routing[0]["indices"][0].tolist()) == chosen
    assert not torch.allclose(changed.logits, out.logits)


def test_router_weights_are_renormalised_top_k_probabilities():
    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL)).eval()
    with torch.no_grad():
        routing = model(**_batch()).routing[1]
    probs = routing["logits"].softmax(-1)
    picked = probs.gather(1, routing["indices"])
    torch.testing.assert_close(routing["weights"], picked / picked.sum(-1, keepdim=True))
    assert (picked.min(-1).values >= probs.topk(3, -1).values[:, 2] - 1e-7).all()


def test_calibration_standardises_each_routers_pooled_input_and_keeps_the_exact_start():
    torch.manual_seed(0)
    base = tiny_gpt2()
    model = MemoryAdapter(base, MemoryConfig(**SMALL, router_input="standardised")).eval()
    batches = [_batch(seed) for seed in range(4)]
    expected = [base(**b).logits for b in batches]
    pooled = {key: [] for key in model.memory["layers"]}
    for key, layer in model.memory["layers"].items():
        layer.router.register_forward_hook(
            lambda m, args, out, key=key: pooled[key].append((m.pool(*args) - m.center) / m.scale)
        )
    assert model.calibrate_routers(batches) == 12
    for key in pooled:
        pooled[key].clear()
    with torch.no_grad():
        for b, logits in zip(batches, expected, strict=True):
            assert torch.equal(model(**b).logits, logits)  # W_o is still zero
    for values in pooled.values():
        values = torch.cat(values)
        torch.testing.assert_close(values.mean(0), torch.zeros(32), atol=1e-5, rtol=0)
        torch.testing.assert_close(values.std(0), torch.ones(32), atol=1e-5, rtol=0)
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"memory.layers.0.router.center", "memory.layers.0.router.scale"} <= names
    plain = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL))
    assert plain.calibrate_routers(batches) == 0  # the seed's router has nothing to calibrate


def test_router_noise_changes_the_picks_in_training_only_and_weights_stay_clean():
    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL, router_noise=5.0))
    batch = {k: v.repeat(8, 1) for k, v in _batch().items()}
    with torch.no_grad():
        clean = model.eval()(**batch).routing[0]
        assert torch.equal(model(**batch).routing[0]["indices"], clean["indices"])  # eval: none
        noisy = model.train()(**batch).routing[0]
    assert not torch.equal(noisy["indices"], clean["indices"])
    probs = noisy["logits"].softmax(-1).gather(1, noisy["indices"])
    torch.testing.assert_close(noisy["weights"], probs / probs.sum(-1, keepdim=True))
    torch.testing.assert_close(noisy["logits"], clean["logits"])


def test_padding_does_not_change_the_routing_of_a_sequence():
    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL)).eval()
    ids = torch.randint(0, 128, (1, 8))
    padded = torch.cat([ids, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 8), torch.zeros(1, 4)], dim=1).long()
    with torch.no_grad():
        alone = model(input_ids=ids).routing[0]["logits"]
        with_pad = model(input_ids=padded, attention_mask=mask).routing[0]["logits"]
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_bank_router_and_projections_but_not_a_frozen_base():
    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL))
    freeze_base(model, train_base=False)
    torch.nn.init.normal_(model.memory["layers"]["0"].o_proj.weight, std=0.1)
    batch = _batch()
    model(**batch, labels=batch["input_ids"]).loss.backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(n.startswith("memory.") for n in trainable)
    for name in ("memory.bank.tokens", "memory.layers.0.router.proj.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0


def test_lora_and_memory_train_together_and_save_merged(tmp_path):
    torch.manual_seed(0)
    base = apply_lora(tiny_gpt2(), LoraSettings(enabled=True, r=4, alpha=8))
    model = MemoryAdapter(base, MemoryConfig(**SMALL, shared_chapters=1)).eval()
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_" in n for n in trainable) and any(n.startswith("memory.") for n in trainable)
    assert not any(n.startswith("base.") and "lora_" not in n for n in trainable)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "o_proj" in name:
                param.normal_(std=0.2)
    batch = _batch()
    expected = model(**batch).logits
    model.save_pretrained(tmp_path)
    loaded = load_memory_model(tmp_path)
    assert not any("lora_" in n for n, _ in loaded.named_parameters())  # merged into the base
    torch.testing.assert_close(loaded(**batch).logits, expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)]
)
def test_save_precision_writes_and_loads_the_folder_at_that_dtype(tmp_path, precision, dtype):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL)).eval()
    with torch.no_grad():
        for layer in model.memory["layers"].values():
            layer.o_proj.weight.normal_(std=0.2)
    batch = _batch()
    expected = model(**batch).logits
    model.save_dtype = precision
    model.save_pretrained(tmp_path)
    assert {t.dtype for t in load_file(tmp_path / "memory.safetensors").values()} == {dtype}
    assert {t.dtype for t in load_file(tmp_path / "model.safetensors").values()} == {dtype}
    loaded = load_memory_model(tmp_path)
    assert {p.dtype for p in loaded.parameters()} == {dtype}
    assert next(model.parameters()).dtype == torch.float32  # the trained model is untouched
    logits = loaded(**batch).logits.float()
    assert (logits - expected).abs().max() < 0.1  # the rounding of 16-bit weights, no more
    assert not torch.equal(logits, expected)


def test_greedy_generate_appends_tokens_and_stops_at_eos():
    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL)).eval()
    ids = torch.randint(0, 128, (1, 5))
    out = model.generate(ids, max_new_tokens=4)
    assert out.shape == (1, 9) and torch.equal(out[:, :5], ids)
    first = int(out[0, 5])
    assert model.generate(ids, max_new_tokens=4, eos_token_id=first).shape == (1, 6)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"top_k": 5}, "top_k: 5 exceeds the 4 chapters"),
        ({"num_memory_tokens": 30}, "num_memory_tokens: 30 is not divisible by chapter_size 8"),
        ({"memory_layers": []}, "memory_layers: expected a non-empty list"),
        ({"chapter_size": 0}, "chapter_size"),
        ({"router_input": "max"}, "router_input: 'max' is not allowed"),
        ({"router_noise": -1.0}, "router_noise: must be >= 0"),
    ],
)
def test_bad_shapes_are_refused_naming_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        MemoryConfig(**{**SMALL, **options})


def test_a_memory_layer_outside_the_model_is_refused():
    config = MemoryConfig(**SMALL, memory_layers=[0, 2])
    with pytest.raises(ValueError, match="memory_layers: layer 2 is outside the model's 2"):
        MemoryAdapter(tiny_gpt2(), config)
    assert MemoryConfig(**SMALL, memory_layers=[-1]).resolve_layers(2) == [1]


def test_a_deep_copy_reads_its_own_memory():
    import copy

    torch.manual_seed(0)
    model = MemoryAdapter(tiny_gpt2(), MemoryConfig(**SMALL)).eval()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.memory["layers"]["0"].o_proj.weight.normal_(std=0.5)
        out = clone(**_batch())
    assert len(out.routing) == 2  # the copy's hooks fill the copy's routing
    assert not torch.equal(out.logits, model(**_batch()).logits)
