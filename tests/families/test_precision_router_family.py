"""The precision-router family: loss, static allocators, budget calibration, settings."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from tiny_models import tiny_gpt2

from router_pipelines.config import config_from_dict
from router_pipelines.families.precision_router import (
    RouterAtBudget,
    RouterEvalConfig,
    RouterLossConfig,
    StaticWidths,
    allocate_exact,
    allocate_greedy,
    allocate_searched,
    calibrate_price,
    calibration_loss,
    fisher_sensitivities,
    layer_sensitivities,
    make_router_loss,
    mean_bits,
    precision_loss,
    random_assignments,
    realised_bits,
    spending_assignments,
)
from router_pipelines.models.precision_router import LayerwiseQuantizeForCausalLM, RouterConfig
from router_pipelines.models.ptq import post_training_quantize

WIDTHS = [2, 4, 8]


def _batches(count: int, seed: int, rows: int = 4, length: int = 24) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, 128, (rows, length), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids})
    return batches


def _router(granularity: str = "token", n_layer: int = 2) -> LayerwiseQuantizeForCausalLM:
    torch.manual_seed(0)
    quantized = post_training_quantize(tiny_gpt2(n_layer=n_layer), WIDTHS, _batches(1, 9))
    router = LayerwiseQuantizeForCausalLM(quantized, RouterConfig(granularity=granularity))
    with torch.no_grad():  # a spread of logits, as a trained router has
        for parameter in router.routers.parameters():
            parameter.normal_(0, 1.0)
    return router


def _brute_force(sensitivity, params, widths, budget):
    best = None
    for config in itertools.product(range(len(widths)), repeat=len(params)):
        bits = [widths[c] for c in config]
        if mean_bits(bits, params) > budget + 1e-9:
            continue
        value = sum(sensitivity[layer, c] for layer, c in enumerate(config))
        if best is None or value < best[0] - 1e-12:
            best = (value, bits)
    return best


@pytest.mark.parametrize("seed", range(6))
def test_exact_allocator_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n_layer = 4
    widths = [2, 3, 4, 6, 8]
    # decreasing with width, like measured sensitivities; unequal layer sizes in half the cases
    sensitivity = np.sort(rng.exponential(1.0, (n_layer, len(widths))), axis=1)[:, ::-1].copy()
    sensitivity[:, -1] = 0
    params = [1024] * n_layer if seed % 2 else [1024, 3072, 2048, 1024]
    for budget in (2.0, 3.3, 4.0, 5.5, 7.9):
        exact = allocate_exact(sensitivity, params, widths, budget)
        value, _ = _brute_force(sensitivity, params, widths, budget)
        assert mean_bits(exact, params) <= budget + 1e-9
        found = sum(sensitivity[i, widths.index(b)] for i, b in enumerate(exact))
        assert found == pytest.approx(value, abs=1e-12)
        greedy = allocate_greedy(sensitivity, params, widths, budget)
        assert mean_bits(greedy, params) <= budget + 1e-9
        greedy_value = sum(sensitivity[i, widths.index(b)] for i, b in enumerate(greedy))
        assert greedy_value >= value - 1e-12
    assert allocate_exact(sensitivity, params, widths, 1.5) is None


def test_exact_allocator_matches_brute_force_on_a_tiny_model():
    router = _router(n_layer=3)
    sensitivity = layer_sensitivities(router, _batches(2, 3))
    assert sensitivity.shape == (3, 3) and (sensitivity[:, -1] == 0).all()
    params = [int(p) for p in router.layer_params.tolist()]
    for budget in (3.0, 4.0, 5.0, 6.0):
        exact = allocate_exact(sensitivity, params, WIDTHS, budget)
        assert exact == _brute_force(sensitivity, params, WIDTHS, budget)[1]


@pytest.mark.parametrize("params", [[1024] * 4, [1024, 3072, 2048, 1024]])
def test_spending_assignments_are_exactly_those_no_single_raise_fits(params):
    widths = [2, 3, 4, 8]
    for budget in (2.0, 2.5, 3.3, 5.0, 8.0):
        brute = []
        for config in itertools.product(widths, repeat=len(params)):
            if mean_bits(config, params) > budget + 1e-9:
                continue
            raises = [
                [*config[:i], widths[widths.index(b) + 1], *config[i + 1 :]]
                for i, b in enumerate(config)
                if b != widths[-1]
            ]
            if all(mean_bits(r, params) > budget + 1e-9 for r in raises):
                brute.append(list(config))
        assert spending_assignments(params, widths, budget, limit=10_000) == brute
        if len(brute) > 1:  # over the limit: None, not a truncated list
            assert spending_assignments(params, widths, budget, limit=len(brute) - 1) is None
            assert spending_assignments(params, widths, budget, limit=len(brute)) == brute
    assert spending_assignments(params, widths, 1.5, limit=10) == []


@pytest.mark.parametrize("seed", range(4))
def test_searched_allocator_on_a_separable_loss_is_the_exact_and_greedy_allocation(seed):
    # loss(widths) = sum_l s[l, b_l], strictly decreasing in width: the exhaustive search must
    # find the knapsack optimum, and the measured greedy the sensitivity greedy's choice
    rng = np.random.default_rng(seed)
    widths = [2, 3, 4, 8]
    params = [1024] * 4 if seed % 2 else [1024, 3072, 2048, 1024]
    sensitivity = np.sort(rng.exponential(1.0, (4, len(widths))), axis=1)[:, ::-1].copy()
    sensitivity[:, -1] = 0
    calls = []

    def loss(config):
        calls.append(config)
        return float(sum(sensitivity[i, widths.index(b)] for i, b in enumerate(config)))

    for budget in (2.5, 3.3, 5.0):
        calls.clear()
        found, how = allocate_searched(loss, params, widths, budget, exhaustive_limit=10_000)
        assert how == "exhaustive"
        assert found == allocate_exact(sensitivity, params, widths, budget)
        assert len(calls) == len(spending_assignments(params, widths, budget, 10_000))
        found, how = allocate_searched(loss, params, widths, budget, exhaustive_limit=1)
        assert how == "greedy"
        assert found == allocate_greedy(sensitivity, params, widths, budget)
    assert allocate_searched(loss, params, widths, 1.5, exhaustive_limit=10) == (None, "exhaustive")
    # the greedy descent does not depend on the budget: memoised, every budget shares one
    calls.clear()
    cached = functools.cache(loss)
    for budget in (2.2, 2.5, 3.0, 3.3, 4.0, 5.0, 6.0, 7.0):
        allocate_searched(cached, params, widths, budget, exhaustive_limit=1)
    assert len(calls) <= 4 * 4 * (len(widths) - 1) + 1


def test_searched_allocator_on_a_tiny_model_is_the_measured_best_assignment():
    router = _router(n_layer=3)
    batches = _batches(2, 3)
    params = [int(p) for p in router.layer_params.tolist()]
    for budget in (3.0, 4.0, 5.0):
        found, how = allocate_searched(
            lambda c: calibration_loss(router, batches, c), params, WIDTHS, budget, 64
        )
        candidates = spending_assignments(params, WIDTHS, budget, 64)
        losses = {tuple(c): calibration_loss(router, batches, c) for c in candidates}
        assert how == "exhaustive" and tuple(found) == min(losses, key=losses.get)
        # the loss it minimised is the model's: forcing those widths reproduces it
        forced = router.infer_forward(
            batches[0]["input_ids"], batches[0]["attention_mask"], forced=found
        )["logits"]
        assert calibration_loss(router, batches[:1], found) == pytest.approx(
            float(
                torch.nn.functional.cross_entropy(
                    forced[:, :-1].reshape(-1, forced.shape[-1]),
                    batches[0]["labels"][:, 1:].reshape(-1),
                )
            ),
            rel=1e-6,
        )


def test_fisher_sensitivity_ranks_a_badly_quantized_layer_first_and_allocates_exactly():
    router = _router(n_layer=3)
    frozen = {k: v.clone() for k, v in router.quantized.state_dict().items()}
    # block 1's lowest width made coarse: its 2-bit steps x8, a large quantization error
    for layer in router._routed[1]:
        with torch.no_grad():
            layer.weight_quantizer.quantizers["2"].step.mul_(8.0)
    batches = _batches(2, 3)
    sensitivity = fisher_sensitivities(router, batches)
    assert sensitivity.shape == (3, 3) and (sensitivity[:, -1] == 0).all()
    assert (sensitivity[:, :-1] > 0).all()
    assert int(np.argmax(sensitivity[:, 0])) == 1, sensitivity
    # the frozen model: untouched apart from the step we changed, and still frozen
    assert all(not p.requires_grad for p in router.quantized.parameters())
    changed = [k for k, v in router.quantized.state_dict().items() if not torch.equal(v, frozen[k])]
    assert changed and all(".quantizers.2.step" in k for k in changed)
    params = [int(p) for p in router.layer_params.tolist()]
    for budget in (3.0, 4.0, 5.0, 6.0):
        exact = allocate_exact(sensitivity, params, WIDTHS, budget)
        assert exact == _brute_force(sensitivity, params, WIDTHS, budget)[1]
        assert exact[1] != 2, "the badly quantized layer is not given its coarse width"


def test_static_initialisation_reproduces_the_static_assignment():
    router = _router(n_layer=3)
    batch = _batches(1, 5)[0]
    widths = [8, 2, 4]
    router.init_static(widths)
    routed = router.infer_forward(batch["input_ids"], batch["attention_mask"])
    assert (routed["choices"] == torch.tensor(widths)).all()
    forced = router.infer_forward(batch["input_ids"], batch["attention_mask"], forced=widths)
    torch.testing.assert_close(routed["logits"], forced["logits"])
    assert realised_bits(router, [batch], 0.0) == pytest.approx(mean_bits(widths, [1, 1, 1]))
    with pytest.raises(ValueError, match="widths"):
        router.init_static([8, 3, 4])


def test_random_assignments_stay_within_budget_and_are_seeded():
    params = [10, 10, 20]
    first = random_assignments(3, params, WIDTHS, 4.0, 3, seed=1)
    assert first == random_assignments(3, params, WIDTHS, 4.0, 3, seed=1)
    assert len(first) == 3 and all(mean_bits(c, params) <= 4.0 for c in first)


@pytest.mark.parametrize("granularity", ["token", "sequence"])
def test_budget_calibration_holds_on_held_out_data(granularity):
    router = _router(granularity)
    # per sequence, each row is one decision per layer: enough rows keep the sampling noise
    # of the realised mean (about 1.5 bits / sqrt(rows)) well inside the 0.1-bit tolerance
    rows, length = (4, 24) if granularity == "token" else (128, 8)
    calibration = _batches(4, seed=11, rows=rows, length=length)
    held_out = _batches(4, seed=12, rows=rows, length=length)
    prices = []
    for budget in (3.0, 4.0, 5.0, 6.0):
        price, calibrated = calibrate_price(router, calibration, budget)
        assert abs(calibrated - budget) <= 0.1
        assert abs(realised_bits(router, held_out, price) - budget) <= 0.1, budget
        prices.append(price)
    assert prices == sorted(prices, reverse=True)  # more bits, lower price


def test_precision_loss_is_normalised_and_target_mode_is_quadratic():
    config = RouterLossConfig()
    assert float(precision_loss(torch.tensor(2.0), WIDTHS, config)) == 0
    assert float(precision_loss(torch.tensor(8.0), WIDTHS, config)) == pytest.approx(5.0)
    target = RouterLossConfig(target_bits=4.0, target_weight=0.5)
    assert float(precision_loss(torch.tensor(6.0), WIDTHS, target)) == pytest.approx(2.0)


def test_loss_weights_are_checked():
    with pytest.raises(ValueError, match="weight_ce"):
        RouterLossConfig(weight_ce=-0.1)
    with pytest.raises(ValueError, match="both are 0"):
        RouterLossConfig(weight_ce=0.0, weight_precision=0.0)


def test_router_loss_reports_the_seed_metrics_and_trains_the_router():
    router = _router("token")
    loss_fn = make_router_loss(RouterLossConfig())
    batch = _batches(1, 5)[0]
    loss, metrics = loss_fn(router, batch, 0)
    expected = 0.7 * metrics["ce"] + 0.3 * metrics["precision_loss"]
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-6)
    assert {"ce", "precision_loss", "avg_precision", "layer_0_bits", "layer_1_bits"} <= set(metrics)
    assert 2 <= float(metrics["avg_precision"]) <= 8
    loss.backward()
    assert all(p.grad is not None for p in router.router_parameters())
    hard_loss, hard_metrics = make_router_loss(RouterLossConfig(), hard=True)(router, batch, 0)
    assert math.isfinite(float(hard_loss)) and "avg_precision" in hard_metrics


def test_settings_apply_restore_and_report_realised_bits():
    from router_pipelines.evaluation import evaluate_settings

    router = _router("token")
    dataset = [{k: v[i] for k, v in b.items()} for b in _batches(2, 4) for i in range(4)]
    params = router.layer_params.tolist()
    price, _ = calibrate_price(router, _batches(2, 6), 5.0)
    settings = [
        StaticWidths("uniform_2bit", "uniform", (2, 2)),
        StaticWidths("fp", "fp", None),
        StaticWidths("exact_b4", "static_exact", (2, 8), budget=4.0),
        RouterAtBudget("router_b5", 5.0, price, 5.0),
    ]
    before = router.quantized.precision_map()
    config = config_from_dict(RouterEvalConfig, {"speed": {"enabled": False}}, "evaluation")
    table = evaluate_settings(router, settings, dataset, config).set_index("name")
    assert router.quantized.precision_map() == before and router.mode is None
    assert table.loc["uniform_2bit", "mean_bits"] == 2.0
    assert table.loc["exact_b4", "mean_bits"] == mean_bits((2, 8), params)
    assert table.loc["fp", "perplexity"] < table.loc["uniform_2bit", "perplexity"]
    assert abs(table.loc["router_b5", "mean_bits"] - 5.0) < 0.5
    assert table.loc["router_b5", "speed_kind"] == "not_measured"


def test_speed_is_timed_on_packed_kernels_that_follow_each_setting():
    from router_pipelines.evaluation import evaluate_settings
    from router_pipelines.models.precision_router import PackedRoutedLinear

    router = _router("sequence")
    batch = _batches(1, 4)[0]
    price, _ = calibrate_price(router, _batches(2, 6), 5.0)
    static = StaticWidths("exact_b5", "static_exact", (2, 8), budget=5.0, packed_dtype="float32")
    routed = RouterAtBudget("router_b5", 5.0, price, 5.0, packed_dtype="float32")
    with static.applied(router):
        timed = static.timed_model(router)
    assert timed.speed_kind == "packed" and timed.speed_dtype == "float32"
    assert all(isinstance(m, PackedRoutedLinear) for r in timed.model._routed for m in r)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():  # timing calls the model as it is, like measure_throughput
        timed.model(**inputs)
    assert [c.tolist() for c in timed.model.last_choices()] == [[2.0] * 4, [8.0] * 4]
    with routed.applied(router):
        expected = router.infer_forward(batch["input_ids"], batch["attention_mask"])["choices"]
        timed = routed.timed_model(router)
    with torch.no_grad():
        timed.model(**inputs)
    got = torch.stack(timed.model.last_choices(), dim=-1)
    assert torch.equal(got, expected)  # the router's own decisions at this price
    assert len(set(expected.flatten().tolist())) > 1, "the test needs a mix"
    assert router.mode is None and timed.model.tally is None
    assert StaticWidths("fp", "fp", None, packed_dtype="float32").timed_model(router) is None
    assert StaticWidths("u2", "uniform", (2, 2)).timed_model(router) is None  # no packed_dtype
    dataset = [{k: v[i] for k, v in batch.items()} for i in range(4)]
    speed = {"decode_tokens": 2, "prefill_seq_len": 8, "warmup": 0, "iters": 1}
    config = config_from_dict(RouterEvalConfig, {"speed": speed}, "evaluation")
    assert config.speed.packed and config.speed.packed_dtype == "bfloat16"  # the defaults
    table = evaluate_settings(router, [static, routed], dataset, config).set_index("name")
    assert (table["speed_kind"] == "packed").all() and (table["tokens_per_s"] > 0).all()


def test_an_unknown_budget_router_selection_is_named():
    with pytest.raises(ValueError, match="budget_router_selection.*'best'.*calibration"):
        config_from_dict(RouterEvalConfig, {"budget_router_selection": "best"}, "evaluation")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("static_search", "yes", "static_search.*'yes'"),
        ("search_exhaustive_limit", 0, "search_exhaustive_limit.*0"),
    ],
)
def test_bad_static_search_settings_are_named(key, value, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(RouterEvalConfig, {key: value}, "evaluation")


def test_budget_routers_start_at_the_static_allocation_of_lowest_calibration_loss(monkeypatch):
    from router_pipelines.pipelines.precision_router import budget_routers
    from router_pipelines.pipelines.precision_router.evaluation_nodes import build_settings

    router = _router(n_layer=3)
    calibration = _batches(2, 3)
    config = RouterEvalConfig(
        budgets=[3.0, 5.0],
        budget_routers=True,
        budget_router_selection="none",
        random_per_budget=0,
        calibration_iterations=2,
    )
    started = {}

    def record(router_, static_widths, budget, *args):
        started[budget] = list(static_widths)
        return router_.routers.state_dict()

    monkeypatch.setattr(budget_routers, "train_budget_router", record)
    sensitivity = layer_sensitivities(router, calibration)
    settings = build_settings(router, sensitivity, calibration, config, (None, None, None))
    static = {s.name: list(s.widths) for s in settings if s.kind.startswith("static_")}
    assert {"static_searched_b3", "static_searched_b5", "static_exact_b3.5"} <= set(static)
    for budget in (3.0, 5.0):
        candidates = [w for n, w in static.items() if n.endswith(f"_b{budget:g}")]
        assert len(candidates) == 3  # exact, greedy, searched
        losses = [calibration_loss(router, calibration, w) for w in candidates]
        assert started[budget] == candidates[int(np.argmin(losses))]
        # the search is at least as good as the separable allocators on the rows it measured
        searched = calibration_loss(router, calibration, static[f"static_searched_b{budget:g}"])
        assert searched <= min(losses) + 1e-12
    assert [s.kind for s in settings].count("budget_router") == 2
