"""The layer-wise precision router (seed 000) on a tiny post-training-quantized GPT-2."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tiny_models import tiny_gpt2, tiny_llama

from router_pipelines.models.packed import PackedInt4Linear, PackedInt8Linear
from router_pipelines.models.precision_router import (
    LayerwiseQuantizeForCausalLM,
    PackedRoutedLinear,
    RoutedQuantLinear,
    RouterConfig,
    differentiable_choice,
    pack_precision_router,
)
from router_pipelines.models.ptq import post_training_quantize
from router_pipelines.models.quant_modules import QuantLinear

WIDTHS = [2, 4, 8]


def _batch(rows: int = 4, length: int = 16, seed: int = 1) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 128, (rows, length), generator=generator)
    mask = torch.ones_like(input_ids)
    mask[-1, length - 4 :] = 0
    return {
        "input_ids": input_ids,
        "attention_mask": mask,
        "labels": input_ids.masked_fill(mask == 0, -100),
    }


def _varied_batch() -> dict[str, torch.Tensor]:
    """Four rows of very different tokens, so pooled (per-sequence) features differ too."""
    generator = torch.Generator().manual_seed(3)
    input_ids = torch.arange(4)[:, None] * 31 + torch.randint(0, 3, (4, 16), generator=generator)
    mask = torch.ones_like(input_ids)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids}


def _quantized(model=None, widths=WIDTHS):
    torch.manual_seed(0)
    model = tiny_gpt2() if model is None else model
    return post_training_quantize(model, widths, [_batch(seed=7)])


def _router(granularity: str = "sequence", **kwargs) -> LayerwiseQuantizeForCausalLM:
    router = LayerwiseQuantizeForCausalLM(
        _quantized(), RouterConfig(granularity=granularity, **kwargs)
    )
    with torch.no_grad():  # spread the logits so inputs get different widths
        for parameter in router.routers.parameters():
            parameter.normal_(0, 1.0)
    return router


def test_ptq_copies_and_quantizes_without_changing_the_source():
    torch.manual_seed(0)
    base = tiny_gpt2()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    quantized = post_training_quantize(base, WIDTHS, [_batch(seed=7)])
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    batch = _batch()
    with torch.no_grad():
        reference = base(input_ids=batch["input_ids"]).logits
        errors = {}
        for bits in WIDTHS:
            quantized.set_precision(bits)
            errors[bits] = (quantized(input_ids=batch["input_ids"]).logits - reference).abs().mean()
    assert errors[2] > errors[4] > errors[8] > 0
    assert not any(p.requires_grad for p in quantized.parameters())


def test_only_router_parameters_train_and_the_frozen_model_is_unchanged_bit_for_bit():
    router = _router("token", delta_feature=True)
    frozen = {k: v.clone() for k, v in router.quantized.state_dict().items()}
    start = [p.detach().clone() for p in router.router_parameters()]
    trainable = [p for p in router.parameters() if p.requires_grad]
    assert {id(p) for p in trainable} == {id(p) for p in router.router_parameters()}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    batch = _batch()
    for _ in range(3):
        out = router.train_forward(batch["input_ids"], batch["attention_mask"], batch["labels"])
        (out["loss"] + 0.5 * out["mean_bits"]).backward()
        assert all(p.grad is None for p in router.quantized.parameters())
        optimizer.step()
        optimizer.zero_grad()
    after = router.quantized.state_dict()
    assert frozen.keys() == after.keys()
    assert all(torch.equal(frozen[k], after[k]) for k in frozen)
    assert any(
        not torch.equal(a, p) for a, p in zip(start, router.router_parameters(), strict=True)
    )


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_forced_uniform_choice_equals_the_model_set_to_that_width(granularity):
    router = _router(granularity)
    batch = _batch()
    for bits in WIDTHS:
        router.quantized.set_precision(bits)
        with torch.no_grad():
            expected = router.quantized(
                input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
            ).logits
        router.quantized.set_precision(None)
        out = router.infer_forward(
            batch["input_ids"], batch["attention_mask"], forced=[bits] * router.num_layers
        )
        assert torch.equal(out["logits"], expected)
        assert (out["choices"] == bits).all()


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_choices_reach_exactly_the_intended_modules(granularity):
    router = _router(granularity)
    batch = _varied_batch()
    seen: dict[str, tuple] = {}

    def capture(name):
        def hook(module, args, output):
            seen[name] = (module.gates, args[0], output)

        return hook

    handles = [
        module.register_forward_hook(capture(name))
        for name, module in router.quantized.model.named_modules()
        if isinstance(module, QuantLinear)
    ]
    out = router.infer_forward(batch["input_ids"], batch["attention_mask"])
    for handle in handles:
        handle.remove()
    choices = out["choices"]  # (B, L) per sequence, (B, T, L) per token
    assert choices.shape == ((4, 2) if granularity == "sequence" else (4, 16, 2))
    assert len(set(choices.flatten().tolist())) > 1, "the test needs varied choices"
    for index, groups in enumerate(router.quantized._layer_groups):
        for name in groups["attn"] + groups["mlp"]:
            gates, x, y = seen[name]
            rows = 1 if granularity == "sequence" else 16
            assert gates.shape == (4, rows, 3)
            chosen = torch.tensor(WIDTHS)[gates.argmax(-1)]  # (B, rows)
            expected_choice = choices[..., index]
            assert torch.equal(chosen.squeeze(-1) if rows == 1 else chosen, expected_choice)
            layer = router.quantized.model.get_submodule(name)
            assert isinstance(layer, RoutedQuantLinear)
            # every row's output is the linear at that row's width, no other width mixed in
            for bits in WIDTHS:
                reference = F.linear(
                    layer.act_quantizer(x, 8),
                    layer.weight_quantizer(layer.weight, bits),
                    layer.bias,
                )
                rows_at = (chosen == bits).expand(x.shape[:2])
                assert torch.equal(y[rows_at], reference[rows_at])
    assert not isinstance(router.quantized.model.get_output_embeddings(), RoutedQuantLinear)


def test_sequence_routing_decides_once_from_the_prompt_during_generation():
    router = _router("sequence")
    batch = _batch(rows=1, length=6)
    calls = []
    block = router._blocks[0]
    handle = block.register_forward_pre_hook(
        lambda m, a: calls.append(router._routed[0][0].gates.clone())
    )
    with router.routing("infer"):
        router.generate(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
        )
    handle.remove()
    # the pre-hook registered later runs after the router's: it sees this step's gates
    assert len(calls) == 4 and all(torch.equal(c, calls[0]) for c in calls)


def test_router_state_saves_and_loads_on_its_own(tmp_path):
    router = _router("token")
    router.save_router(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "precision_router_config.json",
        "router.safetensors",
    ]
    other = LayerwiseQuantizeForCausalLM(router.quantized, RouterConfig(granularity="token"))
    batch = _batch()
    assert not torch.equal(
        other.infer_forward(batch["input_ids"])["choices"],
        router.infer_forward(batch["input_ids"])["choices"],
    )
    other.load_router(tmp_path)
    assert torch.equal(
        other.infer_forward(batch["input_ids"])["choices"],
        router.infer_forward(batch["input_ids"])["choices"],
    )
    narrower = LayerwiseQuantizeForCausalLM(_quantized(), RouterConfig(), precisions=[2, 8])
    with pytest.raises(ValueError, match="precisions"):
        narrower.load_router(tmp_path)


def test_saved_folder_loads_whole_and_a_plain_model_is_refused(tmp_path):
    router = _router("sequence")
    router.save_pretrained(tmp_path / "router")
    loaded = LayerwiseQuantizeForCausalLM.from_pretrained(tmp_path / "router")
    batch = _batch()
    assert torch.equal(
        loaded.infer_forward(batch["input_ids"])["logits"],
        router.infer_forward(batch["input_ids"])["logits"],
    )
    tiny_gpt2().save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="not a multi-precision model"):
        LayerwiseQuantizeForCausalLM.from_quantized(tmp_path / "plain")


def test_precisions_must_be_widths_of_the_model():
    with pytest.raises(ValueError, match=r"precisions: \[2, 3\].*it has \[2, 4, 8\]"):
        LayerwiseQuantizeForCausalLM(_quantized(), precisions=[2, 3])


def test_differentiable_choices():
    logits = torch.tensor([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0]], requires_grad=True)
    widths = torch.tensor([2.0, 4.0, 8.0])
    gates, probs = differentiable_choice(logits, RouterConfig(), widths)
    assert torch.equal(gates.detach(), torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]))
    (gates * widths).sum().backward()
    assert logits.grad.abs().sum() > 0  # the softmax's gradient reaches the logits
    mixed, probs = differentiable_choice(logits, RouterConfig(choice="neighbour_mix"), widths)
    expected = (probs * widths).sum(-1)
    assert torch.allclose((mixed * widths).sum(-1), expected)  # the mix realises the expectation
    assert torch.allclose(mixed.sum(-1), torch.ones(2))
    assert ((mixed > 0).sum(-1) <= 2).all()  # at most two neighbouring widths


def test_llama_routes_too_and_flops_share_is_reported():
    torch.manual_seed(0)
    quantized = post_training_quantize(tiny_llama(), [2, 4], [_batch(seed=7)])
    router = LayerwiseQuantizeForCausalLM(quantized, RouterConfig(granularity="token"))
    out = router.infer_forward(_batch()["input_ids"])
    assert out["choices"].shape == (4, 16, 2)
    share = router.router_flops_share()
    assert (
        0
        < share["router_flops_share"]
        == pytest.approx(share["router_flops_per_decision"] / share["model_flops_per_token"])
    )


def test_a_deep_copy_routes_on_its_own():
    """Kedro's MemoryDataset deep-copies what it holds: the copy's hooks must be its own."""
    import copy

    router = _router("token")
    clone = copy.deepcopy(router)
    batch = _varied_batch()
    with clone.routing("infer", price=1e6):
        lowest = clone.infer_forward(batch["input_ids"])["choices"]
    assert (lowest == 2).all() and router.mode is None
    assert torch.equal(
        clone.infer_forward(batch["input_ids"])["choices"],
        router.infer_forward(batch["input_ids"])["choices"],
    )


def test_the_static_start_is_read_without_changing_the_router():
    """budget_routers.static_start gives init_static's weights and leaves the router as it
    was (it works on the router itself, not a copy of the frozen model)."""
    import copy

    from router_pipelines.pipelines.precision_router.budget_routers import static_start

    router = _router()
    before = {k: v.clone() for k, v in router.routers.state_dict().items()}
    widths = [4] * router.num_layers
    state, bits = static_start(router, widths, 3.0)
    after = router.routers.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    expected = copy.deepcopy(router)
    expected.init_static(widths, 3.0)
    assert all(torch.equal(v, state[k]) for k, v in expected.routers.state_dict().items())
    assert not all(torch.equal(before[k], state[k]) for k in before)
    assert bits == pytest.approx(4.0)


def _weight_only(router: LayerwiseQuantizeForCausalLM) -> LayerwiseQuantizeForCausalLM:
    """The router with activation fake quantization off: what packed kernels compute."""
    for routed in router._routed:
        for layer in routed:
            layer.act_widths = [None] * len(layer.act_widths)
    return router


@pytest.mark.parametrize("granularity", ["sequence", "token"])
def test_the_packed_router_runs_its_choices_on_real_kernels(granularity):
    router = _router(granularity)
    packed = pack_precision_router(router)
    packed_bf16 = pack_precision_router(router, compute_dtype=torch.bfloat16)
    reference = _weight_only(router)
    batch = _varied_batch()
    expected = reference.infer_forward(batch["input_ids"], batch["attention_mask"])
    got = packed.infer_forward(batch["input_ids"], batch["attention_mask"])
    got_bf16 = packed_bf16.infer_forward(batch["input_ids"], batch["attention_mask"])
    assert len(set(expected["choices"].flatten().tolist())) > 1, "the test needs a mix"
    assert torch.equal(got["choices"], expected["choices"])
    torch.testing.assert_close(got["logits"], expected["logits"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_bf16["logits"], expected["logits"], rtol=3e-2, atol=3e-2)
    for routed, source in zip(packed._routed, router._routed, strict=True):
        for layer, original in zip(routed, source, strict=True):
            assert isinstance(layer, PackedRoutedLinear) and layer.gates is None
            kinds = [type(v) for v in layer.variants]
            assert kinds == [PackedInt4Linear, PackedInt4Linear, PackedInt8Linear]  # 2, 4, 8
            assert isinstance(original, RoutedQuantLinear)  # the source is not changed
    assert not any(isinstance(m, RoutedQuantLinear) for m in packed.quantized.model.modules())


def test_the_packed_router_follows_forced_widths_and_decodes_like_the_router():
    router = _router("sequence")
    packed = pack_precision_router(router)
    reference = _weight_only(router)
    batch = _batch(rows=1, length=6)
    mixed = [2, 8]
    forced_expected = reference.infer_forward(batch["input_ids"], forced=mixed)
    forced_got = packed.infer_forward(batch["input_ids"], forced=mixed)
    torch.testing.assert_close(
        forced_got["logits"], forced_expected["logits"], rtol=1e-4, atol=1e-4
    )
    assert forced_got["choices"].tolist() == [mixed]
    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0}
    with reference.routing("infer"):
        expected = reference.generate(input_ids=batch["input_ids"], **kwargs)
    with packed.routing("infer"):
        got = packed.generate(input_ids=batch["input_ids"], **kwargs)
    assert torch.equal(got, expected)


def test_packing_a_router_refuses_a_shape_the_int4_kernel_cannot_take():
    torch.manual_seed(0)
    router = LayerwiseQuantizeForCausalLM(_quantized(tiny_gpt2(n_embd=48)), RouterConfig())
    with pytest.raises(
        NotImplementedError, match=r"transformer\.h\.0\.attn\.c_attn: .*in_features=48"
    ):
        pack_precision_router(router)
