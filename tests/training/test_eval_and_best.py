"""Evaluation: tensor metrics, named eval sets, eval callbacks, best model by any metric."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from training_tiny import SyntheticLM, tiny_gpt2

from router_pipelines.training import Trainer, TrainingConfig, causal_lm_loss


def _replay(values):
    """An eval callback returning ``{"score": next value}`` at each evaluation."""
    calls = iter(values)

    def score(model, accelerator, loaders, step):
        return {"score": torch.tensor(next(calls))}

    return score


@pytest.mark.parametrize(
    ("name", "greater", "expected"),
    [
        ("eval_loss", None, False),
        ("loss", None, False),
        ("eval_val_loss", None, False),
        ("accuracy", None, True),
        ("eval_apgr", None, True),
        ("eval_loss", True, True),
        ("accuracy", False, False),
    ],
)
def test_the_direction_of_the_best_metric(name, greater, expected):
    config = TrainingConfig(output_dir="o", metric_for_best_model=name, greater_is_better=greater)
    assert config.best_metric_greater_is_better is expected
    assert config.best_metric_name.startswith("eval_")


def test_best_model_and_early_stopping_follow_a_greater_is_better_metric(
    make_config, model, train_data, eval_data
):
    config = make_config(
        max_steps=10,
        eval_steps=1,
        metric_for_best_model="score",  # an eval callback's metric, "eval_" left off
        early_stopping=True,
        early_stopping_patience=2,
        early_stopping_threshold=0.05,
        save_best_model=True,
    )
    # 0.1, 0.5 (best), 0.52 (a new best, but not > threshold), 0.3 -> patience 2: stop at 4
    result = Trainer(
        model,
        causal_lm_loss,
        train_data,
        eval_data,
        config=config,
        eval_callbacks=[_replay([0.1, 0.5, 0.52, 0.3, 9.0])],
    ).train()
    assert result.stopped_early and result.global_step == 4
    assert result.best_metric_name == "eval_score"
    assert result.best_step == 3 and result.best_metric == pytest.approx(0.52)
    assert result.best_eval_loss == dict(result.history["eval_loss"])[3]
    assert [v for _, v in result.history["eval_score"]] == pytest.approx([0.1, 0.5, 0.52, 0.3])


def test_a_metric_the_evaluation_never_logs_is_an_error(make_config, model, train_data, eval_data):
    config = make_config(max_steps=2, eval_steps=1, metric_for_best_model="eval_acc")
    trainer = Trainer(model, causal_lm_loss, train_data, eval_data, config=config)
    with pytest.raises(ValueError) as err:
        trainer.train()
    assert str(err.value).startswith(
        "metric_for_best_model: 'eval_acc' is not among the evaluation's metrics ['eval_loss']"
    )
    named = {"val": eval_data, "ood": SyntheticLM(4, seed=7)}
    with pytest.raises(ValueError, match=r"^metric_for_best_model: 'eval_loss' is never logged.*"
                       r"\['eval_val_loss', 'eval_ood_loss'\]"):  # fmt: skip
        Trainer(tiny_gpt2(0), causal_lm_loss, train_data, named, config=make_config(eval_steps=1))


def test_tensor_metrics_are_averaged_like_floats(make_config, train_data):
    def with_tensors(model, batch, step):
        loss, metrics = causal_lm_loss(model, batch, step)
        return loss, {**metrics, "aux": loss.detach() * 2, "const": torch.tensor(0.25)}

    def with_floats(model, batch, step):
        loss, metrics = causal_lm_loss(model, batch, step)
        aux = float(loss.detach()) * 2
        return loss, {"tokens": float(metrics["tokens"]), "aux": aux, "const": 0.25}

    config = make_config(max_steps=4, logging_steps=2, eval_steps=2, gradient_accumulation_steps=2)
    results = [
        Trainer(tiny_gpt2(0), fn, train_data, SyntheticLM(6, seed=3), config=config).train()
        for fn in (with_tensors, with_floats)
    ]
    tensors, floats = (r.history for r in results)
    for key in ("train_loss", "train_aux", "train_const", "eval_loss", "eval_aux", "eval_const"):
        assert [s for s, _ in tensors[key]] == [2, 4]
        assert [v for _, v in tensors[key]] == pytest.approx([v for _, v in floats[key]], rel=1e-6)
    assert [v for _, v in tensors["train_aux"]] == pytest.approx(
        [2 * v for _, v in tensors["train_loss"]], rel=1e-6
    )
    assert [v for _, v in tensors["train_const"]] == pytest.approx([0.25, 0.25])


class _TinyLM(nn.Module):
    """An embedding and a head: a forward with no host sync of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(128, 8), nn.Linear(8, 128)

    def forward(self, input_ids, labels, attention_mask):
        logits = self.head(self.embed(input_ids))[:, :-1]  # (B, T-1, V)
        return nn.functional.cross_entropy(logits.reshape(-1, 128), labels[:, 1:].reshape(-1))


def test_host_syncs_do_not_grow_with_micro_batches(make_config, train_data, monkeypatch):
    """Metrics stay on the device: the host copies per run depend on steps and logs only."""

    def loss_fn(model, batch, step):
        loss = model(**batch)
        return loss, {"aux": loss.detach() * 2, "tokens": batch["attention_mask"].sum()}

    def count_host_copies(accumulation: int) -> int:
        calls = {"n": 0}
        for name in ("item", "tolist", "__float__", "__int__", "__bool__"):
            original = getattr(torch.Tensor, name)

            def counted(self, *args, _original=original, **kwargs):
                calls["n"] += 1
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)
        config = make_config(
            max_steps=4, batch_size=2, gradient_accumulation_steps=accumulation, logging_steps=2
        )
        torch.manual_seed(0)
        trainer = Trainer(_TinyLM(), loss_fn, train_data, config=config)
        calls["n"] = 0
        trainer.train()
        monkeypatch.undo()
        return calls["n"]

    assert count_host_copies(1) == count_host_copies(4) > 0


def test_named_eval_sets_get_their_own_metric_names(make_config, train_data):
    val, ood = SyntheticLM(8, seed=2), SyntheticLM(4, seed=9)
    config = make_config(max_steps=2, eval_steps=2, metric_for_best_model="eval_ood_loss")
    named = Trainer(
        tiny_gpt2(0), causal_lm_loss, train_data, {"val": val, "ood": ood}, config=config
    )
    result = named.train()
    eval_keys = {k for k in result.history if k.startswith("eval_")}
    assert eval_keys == {"eval_val_loss", "eval_ood_loss"}
    assert result.best_metric == result.history["eval_ood_loss"][0][1]
    assert result.best_eval_loss is None  # no plain eval_loss with named sets
    alone = make_config(max_steps=2, eval_steps=2, output_dir=config.output_dir + "-alone")
    single = Trainer(tiny_gpt2(0), causal_lm_loss, train_data, ood, config=alone).train()
    ((step, alone_loss),) = single.history["eval_loss"]
    assert (step, alone_loss) == (2, pytest.approx(result.history["eval_ood_loss"][0][1]))
    with pytest.raises(ValueError, match=r"^eval_dataset: names must be letters"):
        Trainer(tiny_gpt2(0), causal_lm_loss, train_data, {"a b": val}, config=config)
    with pytest.raises(ValueError, match=r"^eval_dataset: an empty mapping"):
        Trainer(tiny_gpt2(0), causal_lm_loss, train_data, {}, config=config)


def test_eval_callbacks_see_the_loaders_and_the_model_in_eval_mode(make_config, train_data):
    seen = []

    def routing_entropy(model, accelerator, loaders, step):
        seen.append((sorted(loaders), model.training, torch.is_grad_enabled(), step))
        rows = sum(batch["input_ids"].shape[0] for loader in loaders.values() for batch in loader)
        return {"rows": rows, "eval_entropy": torch.tensor(0.5)}

    config = make_config(max_steps=2, eval_steps=1, metric_for_best_model="eval_entropy")
    result = Trainer(
        tiny_gpt2(0),
        causal_lm_loss,
        train_data,
        {"val": SyntheticLM(6, seed=2)},
        config=config,
        eval_callbacks=[routing_entropy],
    ).train()
    assert seen == [(["val"], False, False, 1), (["val"], False, False, 2)]
    assert result.history["eval_rows"] == [(1, 6.0), (2, 6.0)]
    assert result.history["eval_entropy"] == [(1, 0.5), (2, 0.5)]
    assert result.best_step == 1  # 0.5 never beats 0.5 (greater is better, not a loss)

    # An unnamed eval set is "eval" to callbacks; a callback alone (no eval set) evaluates too.
    for eval_set, names in ((SyntheticLM(6, seed=2), ["eval"]), (None, [])):
        config = make_config(
            max_steps=1,
            eval_steps=1,
            metric_for_best_model="eval_entropy",
            output_dir=f"{config.output_dir}-{len(names)}",
        )
        alone = Trainer(
            tiny_gpt2(0),
            causal_lm_loss,
            train_data,
            eval_set,
            config=config,
            eval_callbacks=[routing_entropy],
        ).train()
        assert seen[-1][0] == names and alone.best_metric == 0.5
    with pytest.raises(ValueError, match=r"metric 'eval_loss' is already produced"):
        Trainer(
            tiny_gpt2(0),
            causal_lm_loss,
            train_data,
            SyntheticLM(4),
            config=make_config(max_steps=1, eval_steps=1),
            eval_callbacks=[lambda m, a, loaders, s: {"loss": 1.0}],
        ).train()
    with pytest.raises(ValueError, match=r"^eval_callbacks: .*metric 'x' must be a float"):
        Trainer(
            tiny_gpt2(0),
            causal_lm_loss,
            train_data,
            SyntheticLM(4),
            config=make_config(max_steps=1, eval_steps=1),
            eval_callbacks=[lambda m, a, loaders, s: {"x": torch.ones(2)}],
        ).train()


def test_bad_metrics_from_a_loss_function_are_named(make_config, model, train_data):
    def vector_metric(model, batch, step):
        loss, _ = causal_lm_loss(model, batch, step)
        return loss, {"per_layer": torch.ones(3)}

    with pytest.raises(ValueError, match=r"^loss_fn: metric 'per_layer' must be a float or a 0-d"):
        Trainer(model, vector_metric, train_data, config=make_config(max_steps=1)).train()
