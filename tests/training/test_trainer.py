"""The training loop: learning, accumulation, lrs, logging, evaluation, best model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset
from training_tiny import SyntheticLM, tiny_gpt2
from transformers import GPT2LMHeadModel

from router_pipelines.training import Trainer, causal_lm_loss, resolve_mixed_precision
from router_pipelines.training.checkpoint import list_checkpoints


def _record_step_lrs(trainer: Trainer) -> list[dict[str, float]]:
    """The lr of every group at each real optimizer.step (a step pre-hook)."""
    seen: list[dict[str, float]] = []

    def hook(optimizer, args, kwargs):
        seen.append({g["group_name"]: g["lr"] for g in optimizer.param_groups})

    trainer.optimizer.optimizer.register_step_pre_hook(hook)
    return seen


def _fake_eval_losses(values):
    """An eval loss function replaying ``values`` one evaluation at a time (1 batch each)."""
    calls = iter(values)

    def eval_loss(model, batch, step):
        return torch.tensor(next(calls)), {}

    return eval_loss


def test_a_few_steps_reduce_the_loss(make_config, model, train_data):
    result = Trainer(model, causal_lm_loss, train_data, config=make_config(max_steps=16)).train()
    losses = [v for _, v in result.history["train_loss"]]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    assert result.global_step == 16
    assert result.epochs_completed == pytest.approx(2.0)  # 32 examples / batch 4 = 8 steps
    assert result.tokens_seen == 16 * 4 * 16
    assert result.model is model


def test_gradient_accumulation_matches_a_bigger_batch(make_config, train_data):
    # adam_eps=1e-4: GPT-2's key bias has a zero true gradient, and Adam would blow its
    # float-rounding noise up to lr-sized updates; eps keeps the comparison about gradients.
    big = Trainer(
        tiny_gpt2(0), causal_lm_loss, train_data, config=make_config(batch_size=4, adam_eps=1e-4)
    )
    small_config = make_config(
        batch_size=2,
        gradient_accumulation_steps=2,
        adam_eps=1e-4,
        output_dir=str(Path(big.config.output_dir) / "small"),
    )
    small = Trainer(tiny_gpt2(0), causal_lm_loss, train_data, config=small_config)
    # Both exist before either trains: each must keep its own accumulation setting.
    big_model, small_model = big.train().model, small.train().model
    torch.testing.assert_close(
        small_model.state_dict(), big_model.state_dict(), atol=1e-6, rtol=1e-5
    )
    assert not torch.equal(big_model.transformer.wte.weight, tiny_gpt2(0).transformer.wte.weight)


def test_param_groups_get_their_learning_rates(make_config, model, train_data):
    config = make_config(
        max_steps=2,
        learning_rate=1e-3,
        weight_decay=0.1,
        param_groups=[
            {"pattern": r"^transformer\.h\.0\.", "lr": 5e-4, "weight_decay": 0.0},
            {"pattern": r"wte", "lr_multiplier": 10},
        ],
    )
    trainer = Trainer(model, causal_lm_loss, train_data, config=config)
    groups = {g["group_name"]: g for g in trainer.optimizer.param_groups}
    assert set(groups) == {
        "default",
        "default/no_decay",
        r"^transformer\.h\.0\.",
        r"^transformer\.h\.0\./no_decay",
        "wte",
    }
    assert groups["default"]["weight_decay"] == 0.1
    assert groups["default/no_decay"]["weight_decay"] == 0.0  # biases and LayerNorm weights
    assert groups[r"^transformer\.h\.0\."]["weight_decay"] == 0.0
    wte = model.transformer.wte.weight
    assert any(p is wte for p in groups["wte"]["params"])
    assert all(p.ndim < 2 for p in groups["default/no_decay"]["params"])
    seen = _record_step_lrs(trainer)
    trainer.train()
    expected = {
        "default": 1e-3,
        "default/no_decay": 1e-3,
        r"^transformer\.h\.0\.": 5e-4,
        r"^transformer\.h\.0\./no_decay": 5e-4,
        "wte": 1e-2,
    }
    assert len(seen) == 2
    for lrs in seen:
        assert lrs == pytest.approx(expected)


def test_param_group_pattern_matching_nothing_is_an_error(make_config, model, train_data):
    config = make_config(param_groups=[{"pattern": "no_such_layer", "lr": 1e-3}])
    with pytest.raises(ValueError, match=r"param_groups.*no_such_layer.*matches no"):
        Trainer(model, causal_lm_loss, train_data, config=config)


def _lr_factor(name: str, step: int, warmup: int, total: int) -> float:
    """Golden schedule values written out by hand (step is 0-based)."""
    if step < warmup:
        return step / warmup
    progress = (step - warmup) / (total - warmup)
    return {
        "cosine": 0.5 * (1 + math.cos(math.pi * progress)),
        "linear": 1 - progress,
        "constant": 1.0,
    }[name]


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_scheduler_lr_at_each_step(make_config, model, train_data, scheduler):
    config = make_config(max_steps=8, warmup_steps=2, scheduler=scheduler, learning_rate=1e-3)
    trainer = Trainer(model, causal_lm_loss, train_data, config=config)
    seen = _record_step_lrs(trainer)
    result = trainer.train()
    expected = [1e-3 * _lr_factor(scheduler, s, 2, 8) for s in range(8)]
    assert [lrs["default"] for lrs in seen] == pytest.approx(expected)
    assert [v for _, v in result.history["lr"]] == pytest.approx(expected)
    assert [s for s, _ in result.history["lr"]] == list(range(1, 9))


def test_lr_multiplier_fn_scales_every_group(make_config, model, train_data):
    config = make_config(
        max_steps=4, learning_rate=1e-3, param_groups=[{"pattern": "wte", "lr": 2e-3}]
    )
    multipliers = [1.0, 0.5, 2.0, 0.25]
    trainer = Trainer(
        model, causal_lm_loss, train_data, config=config, lr_multiplier_fn=lambda s: multipliers[s]
    )
    seen = _record_step_lrs(trainer)
    result = trainer.train()
    assert [lrs["default"] for lrs in seen] == pytest.approx([1e-3 * m for m in multipliers])
    assert [lrs["wte"] for lrs in seen] == pytest.approx([2e-3 * m for m in multipliers])
    assert [v for _, v in result.history["lr"]] == pytest.approx([1e-3 * m for m in multipliers])


def test_log_fn_gets_every_metric_on_schedule(make_config, model, train_data, eval_data):
    calls: list[tuple[dict[str, float], int]] = []

    def family_loss(model, batch, step):
        loss, metrics = causal_lm_loss(model, batch, step)
        return loss, {**metrics, "aux": 0.5}

    config = make_config(max_steps=4, logging_steps=2, eval_steps=2)
    result = Trainer(
        model,
        family_loss,
        train_data,
        eval_data,
        config=config,
        log_fn=lambda metrics, step: calls.append((metrics, step)),
    ).train()
    train_logs = [(m, s) for m, s in calls if "train_loss" in m]
    eval_logs = [(m, s) for m, s in calls if "eval_loss" in m]
    assert [s for _, s in train_logs] == [2, 4]
    assert [s for _, s in eval_logs] == [2, 4]
    assert set(train_logs[0][0]) == {
        "train_loss",
        "train_aux",
        "grad_norm",
        "tokens_per_s",
        "lr",
        "epoch",
    }
    assert train_logs[0][0]["train_aux"] == pytest.approx(0.5)
    assert set(eval_logs[0][0]) == {"eval_loss", "eval_aux"}
    assert result.history["train_loss"] == [(s, m["train_loss"]) for m, s in train_logs]
    assert result.train_loss == train_logs[-1][0]["train_loss"]


def test_eval_loss_is_token_weighted(make_config, model, train_data):
    """Two eval batches with 3 and 1 tokens: the mean weighs them 3:1."""
    batches = iter([(1.0, 3.0), (5.0, 1.0)])

    def weighted(model, batch, step):
        loss, tokens = next(batches)
        return torch.tensor(loss), {"tokens": tokens}

    config = make_config(max_steps=1, eval_steps=1, eval_batch_size=2, save_best_model=False)
    result = Trainer(
        model,
        causal_lm_loss,
        train_data,
        SyntheticLM(4, seed=3),
        config=config,
        eval_loss_fn=weighted,
    ).train()
    assert result.history["eval_loss"] == [(1, pytest.approx((3 * 1.0 + 1 * 5.0) / 4))]


def test_a_loss_metric_is_the_loss_not_a_second_copy(make_config, model, train_data):
    """Families report their loss as a "loss" metric too; it must not be added twice."""

    def reporting(model, batch, step):
        loss, metrics = causal_lm_loss(model, batch, step)
        return loss, {"loss": float(loss.detach()), **metrics}

    config = make_config(max_steps=2, eval_steps=2, logging_steps=1, save_best_model=False)
    eval_set = SyntheticLM(4, seed=3)
    reported = Trainer(
        model, reporting, train_data, eval_set, config=config, eval_loss_fn=reporting
    ).train()
    eval_loss = reported.history["eval_loss"][0][1]
    plain = Trainer(tiny_gpt2(), causal_lm_loss, train_data, eval_set, config=config).train()
    assert eval_loss == pytest.approx(plain.history["eval_loss"][0][1], rel=1e-5)
    assert [v for _, v in reported.history["train_loss"]] == pytest.approx(
        [v for _, v in plain.history["train_loss"]], rel=1e-5
    )


def test_early_stopping_counts_evaluations(make_config, model, train_data, eval_data):
    config = make_config(
        max_steps=20,
        eval_steps=1,
        eval_batch_size=12,
        early_stopping=True,
        early_stopping_patience=2,
        early_stopping_threshold=0.05,
        save_best_model=False,
    )
    # Improvements: 1.0 (first), 0.98 (< threshold), 0.90 (> threshold), 0.89, 0.88 -> stop.
    eval_loss = _fake_eval_losses([1.0, 0.98, 0.90, 0.89, 0.88, 0.1])
    result = Trainer(
        model, causal_lm_loss, train_data, eval_data, config=config, eval_loss_fn=eval_loss
    ).train()
    assert result.stopped_early
    assert result.global_step == 5
    assert result.best_eval_loss == pytest.approx(0.88)
    assert result.best_step == 5


def test_best_model_is_saved_and_loadable(make_config, model, train_data, eval_data):
    config = make_config(max_steps=6, eval_steps=2, eval_batch_size=12, load_best_model_at_end=True)
    eval_loss = _fake_eval_losses([3.0, 1.0, 2.0])  # best at step 4
    snapshots = {}

    def log_fn(metrics, step):
        if step == 4 and "eval_loss" in metrics:
            snapshots[4] = {k: v.clone() for k, v in model.state_dict().items()}

    result = Trainer(
        model,
        causal_lm_loss,
        train_data,
        eval_data,
        config=config,
        eval_loss_fn=eval_loss,
        log_fn=log_fn,
    ).train()
    assert result.best_step == 4 and result.best_eval_loss == 1.0
    best_dir = Path(result.best_model_dir)
    assert best_dir == Path(result.run_dir) / "best"
    assert Path(result.run_dir).parent == Path(config.output_dir)
    assert (best_dir / "model.safetensors").is_file() and (best_dir / "config.json").is_file()
    loaded = GPT2LMHeadModel.from_pretrained(best_dir)
    torch.testing.assert_close(loaded.state_dict(), snapshots[4], atol=0, rtol=0)
    # load_best_model_at_end: the returned model holds the step-4 weights, not step 6's.
    torch.testing.assert_close(result.model.state_dict(), snapshots[4], atol=0, rtol=0)


class _PlainLM(nn.Module):
    """A non-HF model: embedding + tied head, no save_pretrained."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(128, 16)
        self.head = nn.Linear(16, 128, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, input_ids, labels, attention_mask):
        logits = self.head(self.embed(input_ids))[:, :-1]
        return nn.functional.cross_entropy(logits.reshape(-1, 128), labels[:, 1:].reshape(-1))


def test_best_model_of_a_plain_module_is_a_safetensors_file(make_config, train_data, eval_data):
    torch.manual_seed(0)
    model = _PlainLM()
    config = make_config(max_steps=2, eval_steps=2, load_best_model_at_end=True)
    result = Trainer(
        model, lambda m, b, s: (m(**b), {}), train_data, eval_data, config=config
    ).train()
    files = sorted(p.name for p in Path(result.best_model_dir).iterdir())
    assert files == ["best_model_info.json", "model.safetensors"]
    assert result.model is model


def test_save_total_limit_keeps_the_newest_and_the_best(make_config, model, train_data, eval_data):
    config = make_config(
        max_steps=5, save_steps=1, save_total_limit=2, eval_steps=1, eval_batch_size=12
    )
    eval_loss = _fake_eval_losses([1.0, 0.5, 2.0, 3.0, 4.0])  # best at step 2
    result = Trainer(
        model, causal_lm_loss, train_data, eval_data, config=config, eval_loss_fn=eval_loss
    ).train()
    assert [step for step, _ in list_checkpoints(result.run_dir)] == [2, 4, 5]
    assert result.last_checkpoint == str(Path(result.run_dir) / "checkpoint-5")
    assert (Path(result.run_dir) / "best").is_dir()


def test_gradient_checkpointing_switch(make_config, model, train_data):
    config = make_config(max_steps=2, gradient_checkpointing=True)
    result = Trainer(model, causal_lm_loss, train_data, config=config).train()
    assert model.is_activation_checkpointing
    assert math.isfinite(result.train_loss)
    with pytest.raises(ValueError, match=r"^gradient_checkpointing: true, but _PlainLM"):
        Trainer(_PlainLM(), causal_lm_loss, train_data, config=config)


def test_mixed_precision_auto(monkeypatch):
    assert resolve_mixed_precision("auto", cpu=False) == "no"  # this machine has no CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision("auto", cpu=False) == "bf16"
    assert resolve_mixed_precision("auto", cpu=True) == "no"
    assert resolve_mixed_precision("fp16", cpu=False) == "fp16"


def test_bf16_autocast_on_cpu_trains(make_config, model, train_data):
    config = make_config(max_steps=2, mixed_precision="bf16")
    trainer = Trainer(model, causal_lm_loss, train_data, config=config)
    assert trainer.accelerator.mixed_precision == "bf16"
    result = trainer.train()
    assert math.isfinite(result.train_loss)
    assert next(result.model.parameters()).dtype == torch.float32  # master weights stay fp32


class _Stream(IterableDataset):
    def __iter__(self):
        yield from ()


def test_bad_inputs_fail_before_training(make_config, model, train_data):
    with pytest.raises(ValueError, match="^train_dataset: expected a map-style dataset"):
        Trainer(model, causal_lm_loss, _Stream(), config=make_config())
    with pytest.raises(ValueError, match="^train_dataset: 3 examples is less than one global"):
        Trainer(model, causal_lm_loss, SyntheticLM(3), config=make_config())
    with pytest.raises(ValueError, match="^config: expected a TrainingConfig"):
        Trainer(model, causal_lm_loss, train_data)
    with pytest.raises(ValueError, match="^early_stopping: true needs an eval_dataset"):
        Trainer(
            model, causal_lm_loss, train_data, config=make_config(early_stopping=True, eval_steps=1)
        )
    with pytest.raises(ValueError, match="^loss_fn: must return a scalar tensor"):
        Trainer(
            model, lambda m, b, s: (torch.ones(2), {}), train_data, config=make_config()
        ).train()


def test_eval_max_batches_caps_the_eval_set(make_config, model, train_data, eval_data):
    seen = []

    def eval_loss(model, batch, step):
        seen.append(batch["input_ids"].shape[0])
        return causal_lm_loss(model, batch, step)

    config = make_config(max_steps=2, eval_steps=1, eval_batch_size=5, eval_max_batches=2)
    Trainer(
        model, causal_lm_loss, train_data, eval_data, config=config, eval_loss_fn=eval_loss
    ).train()
    assert seen == [5, 5, 5, 5]  # 2 batches per evaluation, 2 evaluations
    seen.clear()
    config = make_config(
        max_steps=1, eval_steps=1, eval_batch_size=5, output_dir=config.output_dir + "2"
    )
    Trainer(
        tiny_gpt2(0), causal_lm_loss, train_data, eval_data, config=config, eval_loss_fn=eval_loss
    ).train()
    assert seen == [5, 5, 2]  # all 12 examples, the last batch kept


def test_progress_bar_shows_loss_lr_and_throughput(make_config, train_data, capsys):
    Trainer(
        tiny_gpt2(0), causal_lm_loss, train_data, config=make_config(max_steps=2, progress_bar=True)
    ).train()
    shown = capsys.readouterr().err
    assert (
        "train: 100%" in shown and "loss=" in shown and "lr=1.00e-02" in shown and "tok_s=" in shown
    )
    quiet = make_config(max_steps=2, progress_bar=False)
    Trainer(tiny_gpt2(0), causal_lm_loss, train_data, config=quiet).train()
    assert "train:" not in capsys.readouterr().err
