"""The progress bar shows chosen logged metrics beside loss, lr and tokens/s."""

from __future__ import annotations

import pytest
from training_tiny import tiny_gpt2

from router_pipelines.training import Trainer


def _loss_with_extras(model, batch, step):
    del step
    loss = model(**batch).loss
    return loss, {"ce": loss.detach() * 1.0, "tokens": (batch["labels"][:, 1:] != -100).sum()}


def test_progress_metrics_appear_in_the_bar_with_their_labels(make_config, train_data, capsys):
    config = make_config(
        max_steps=2, progress_bar=True, progress_metrics={"train_ce": "CE", "train_nope": "NOPE"}
    )
    Trainer(tiny_gpt2(0), _loss_with_extras, train_data, config=config).train()
    shown = capsys.readouterr().err
    assert "loss=" in shown and "CE=" in shown, shown
    assert "NOPE" not in shown, "a metric that is not logged is left out"


def test_default_bar_has_no_extra_fields(make_config, train_data, capsys):
    config = make_config(max_steps=2, progress_bar=True)
    Trainer(tiny_gpt2(0), _loss_with_extras, train_data, config=config).train()
    assert "CE=" not in capsys.readouterr().err


@pytest.mark.parametrize("bad", [["train_ce"], {"train_ce": ""}, {"": "CE"}])
def test_progress_metrics_must_map_names_to_labels(make_config, bad):
    with pytest.raises(ValueError, match="progress_metrics"):
        make_config(progress_metrics=bad)
