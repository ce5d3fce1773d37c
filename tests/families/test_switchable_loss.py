"""The switchable family's losses: distillation, single-width and joint training, eval."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from router_pipelines.families.switchable import (
    DistillConfig,
    SwitchingConfig,
    distillation_kl,
    make_eval_loss,
    make_switchable_loss,
)
from router_pipelines.models.switchable import SwitchableConfig, SwitchableLM


def test_distill_config_errors():
    with pytest.raises(ValueError, match="temperature: must be > 0"):
        DistillConfig(temperature=0)
    with pytest.raises(ValueError, match="kd_weight: must be >= 0"):
        DistillConfig(kd_weight=-1.0)


def reference_kl(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float):
    """T^2 * mean over predicted tokens of sum p_t (log p_t - log p_s), in float64."""
    mask = labels[:, 1:] != -100
    s = student[:, :-1][mask].double() / t
    p = teacher[:, :-1][mask].double() / t
    log_ps = s - s.logsumexp(-1, keepdim=True)
    log_pt = p - p.logsumexp(-1, keepdim=True)
    return (log_pt.exp() * (log_pt - log_ps)).sum(-1).mean() * t**2


def switchable(base: nn.Module, batch: dict, widths=(2, 4, 8)) -> SwitchableLM:
    """Swap a copy of ``base``; initialise every quantizer on ``batch``."""
    model = SwitchableLM.from_base(copy.deepcopy(base), SwitchableConfig(bit_widths=list(widths)))
    with torch.no_grad():
        for bits in widths:
            model.set_precision(bits)
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return model


def test_distillation_kl_matches_reference():
    labels = torch.tensor([[1, 2, 3, -100], [4, -100, 5, 6]])
    student, teacher = torch.randn(2, 4, 7), torch.randn(2, 4, 7)
    value = distillation_kl(student, teacher, labels, temperature=2.0)
    assert_close(value.double(), reference_kl(student, teacher, labels, 2.0))
    assert distillation_kl(student, student, labels, 1.0).abs() < 1e-6
    every_position = torch.tensor([[1, 2, 3, 4], [4, 5, 5, 6]])  # the reshape path, no gather
    value = distillation_kl(student, teacher, every_position, temperature=2.0)
    assert_close(value.double(), reference_kl(student, teacher, every_position, 2.0))


def test_single_width_loss_sets_precision_and_combines_terms(tiny_gpt2, batch):
    model, teacher = switchable(tiny_gpt2, batch), copy.deepcopy(tiny_gpt2).train()
    with torch.no_grad():  # a teacher that disagrees with the student, so KD is sizeable
        teacher.lm_head.weight.add_(torch.randn_like(teacher.lm_head.weight))
    switching = SwitchingConfig(strategy="cyclic", bit_widths=[8, 4, 2], switch_interval=1)
    distill = DistillConfig(ce_weight=0.5, kd_weight=2.0, temperature=2.0)
    loss_fn = make_switchable_loss(teacher, switching, distill)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    loss, metrics = loss_fn(model, batch, 1)  # step 1 -> 4 bits
    assert set(model.precision_map().values()) == {(4, 8)}
    with torch.no_grad():
        out = model(**batch)
        teacher_logits = teacher(input_ids=batch["input_ids"]).logits
    kd = reference_kl(out.logits, teacher_logits, batch["labels"], 2.0)
    assert_close(loss.double(), 0.5 * out.loss.double() + 2.0 * kd, rtol=1e-5, atol=1e-6)
    assert metrics["bits"] == 4.0 and float(metrics["tokens"]) == 19.0
    assert float(metrics["ce"]) == pytest.approx(out.loss.item(), rel=1e-6)
    assert float(metrics["kd"]) == pytest.approx(kd.item(), rel=1e-4)
    assert float(metrics["loss"]) == pytest.approx(loss.item())


@pytest.mark.parametrize("strategy", ["cyclic", "joint"])
def test_metrics_are_detached_scalar_tensors(tiny_gpt2, batch, strategy):
    """The engine reduces metrics once per logging step: no float() (a device sync) here."""
    model, teacher = switchable(tiny_gpt2, batch), copy.deepcopy(tiny_gpt2)
    loss_fn = make_switchable_loss(teacher, SwitchingConfig(strategy=strategy), DistillConfig())
    loss, metrics = loss_fn(model, batch, 0)
    assert loss.requires_grad
    tensors = {key: value for key, value in metrics.items() if key != "bits"}
    assert {"loss", "ce", "kd", "tokens"} <= set(tensors)
    for key, value in tensors.items():
        assert isinstance(value, torch.Tensor) and value.dim() == 0, key
        assert not value.requires_grad, key
    assert isinstance(metrics["bits"], float)
    _, eval_metrics = make_eval_loss(4)(model, batch, 0)
    assert isinstance(eval_metrics["loss"], torch.Tensor) and not eval_metrics["loss"].requires_grad


def test_first_call_initialises_every_trained_width(tiny_gpt2, batch):
    model = SwitchableLM.from_base(copy.deepcopy(tiny_gpt2), SwitchableConfig(act_bits="same"))
    switching = SwitchingConfig(strategy="cyclic", bit_widths=[8, 4], switch_interval=5)
    make_switchable_loss(None, switching, DistillConfig())(model, batch, 0)
    flags = {n: bool(b) for n, b in model.named_buffers() if n.endswith("initialized")}
    assert flags and all(flags[n] for n in flags if ".4." in n or ".8." in n)
    assert not any(flags[n] for n in flags if ".2." in n)  # not trained: left for later


def test_kd_is_zero_when_the_teacher_is_the_full_precision_student(tiny_gpt2, batch):
    model = switchable(tiny_gpt2, batch)
    loss_fn = make_switchable_loss(
        copy.deepcopy(tiny_gpt2), SwitchingConfig(bit_widths=["fp"]), DistillConfig()
    )
    _, metrics = loss_fn(model, batch, 0)
    assert metrics["bits"] == 32.0 and metrics["kd"] < 1e-6


def test_joint_gradient_is_the_sum_of_per_width_gradients(tiny_gpt2, batch):
    model, teacher = switchable(tiny_gpt2, batch), copy.deepcopy(tiny_gpt2)
    distill = DistillConfig(
        ce_weight=1.0, kd_weight=0.5, temperature=2.0, inter_width_kd_weight=0.3
    )
    loss_fn = make_switchable_loss(teacher, SwitchingConfig(strategy="joint"), distill)
    loss, metrics = loss_fn(model, batch, 0)
    loss.backward()
    joint_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    with torch.no_grad():
        teacher_logits = teacher(input_ids=batch["input_ids"]).logits
    reference_total, higher, reference_ce = 0.0, None, {}
    for bits in (8, 4, 2):
        model.set_precision(bits)
        out = model(**batch)
        width_loss = out.loss + 0.5 * reference_kl(out.logits, teacher_logits, batch["labels"], 2.0)
        if higher is not None:
            width_loss = width_loss + 0.3 * reference_kl(out.logits, higher, batch["labels"], 2.0)
        width_loss.backward()  # gradients accumulate over the widths
        higher = out.logits.detach()
        reference_total += width_loss.item()
        reference_ce[bits] = out.loss.item()
    reference_grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}

    assert joint_grads.keys() == reference_grads.keys()
    assert any("quantizers.2.step" in n for n in joint_grads)  # every width's steps train
    for name, grad in joint_grads.items():
        assert_close(grad, reference_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    assert loss.item() == pytest.approx(reference_total, rel=1e-5)
    assert float(metrics["ce_2bit"]) == pytest.approx(reference_ce[2], rel=1e-5)
    assert metrics["bits"] == pytest.approx(14 / 3)
    assert metrics["kd_inter"] > 0


def test_loss_decreases_over_a_few_steps(tiny_gpt2, batch):
    model, teacher = switchable(tiny_gpt2, batch), copy.deepcopy(tiny_gpt2)
    switching = SwitchingConfig(strategy="cyclic", bit_widths=[2, 4, 8], switch_interval=1)
    loss_fn = make_switchable_loss(teacher, switching, DistillConfig(kd_weight=0.5))
    eval_fns = {bits: make_eval_loss(bits) for bits in (2, 4, 8)}
    with torch.no_grad():
        before = {bits: fn(model, batch, 0)[0].item() for bits, fn in eval_fns.items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(12):
        loss, _ = loss_fn(model, batch, step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = {bits: fn(model, batch, 0)[0].item() for bits, fn in eval_fns.items()}
    for bits in (2, 4, 8):
        assert after[bits] < before[bits] - 0.1, (bits, before, after)


def test_eval_loss_sets_the_width_and_reports_tokens(tiny_gpt2, batch):
    model = switchable(tiny_gpt2, batch)
    loss, metrics = make_eval_loss(2)(model, batch, 0)
    assert set(model.precision_map().values()) == {(2, 8)}
    with torch.no_grad():
        assert loss.item() == pytest.approx(model(**batch).loss.item())
    assert set(metrics) == {"loss", "bits", "tokens"}
    assert float(metrics["loss"]) == pytest.approx(loss.item())
    assert metrics["bits"] == 2.0 and float(metrics["tokens"]) == 19.0
    make_eval_loss("fp")(model, batch, 0)
    assert set(model.precision_map().values()) == {(None, None)}


class _Wrapper(nn.Module):
    """Stands in for DDP: the model is ``.module``, forward delegates."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, **kwargs):
        return self.module(**kwargs)


def test_loss_reaches_a_wrapped_model(tiny_gpt2, batch):
    model = switchable(tiny_gpt2, batch)
    loss_fn = make_switchable_loss(None, SwitchingConfig(bit_widths=[4]), DistillConfig())
    _, metrics = loss_fn(_Wrapper(model), batch, 0)
    assert metrics["bits"] == 4.0 and metrics["kd"] == 0.0
    assert set(model.precision_map().values()) == {(4, 8)}
    with pytest.raises(TypeError, match="no set_precision"):
        loss_fn(tiny_gpt2, batch, 0)


def test_a_width_the_model_lacks_is_named(tiny_gpt2, batch):
    model = switchable(tiny_gpt2, batch, widths=(4, 8))
    loss_fn = make_switchable_loss(None, SwitchingConfig(bit_widths=[2]), DistillConfig())
    with pytest.raises(ValueError, match=r"2 bits is not a width of this model; .*\[4, 8\]"):
        loss_fn(model, batch, 0)
