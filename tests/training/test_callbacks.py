"""Step callbacks: order of the hooks, stopping, bad callbacks."""

from __future__ import annotations

import pytest
from training_tiny import tiny_gpt2

from router_pipelines.training import Trainer, TrainerCallback, causal_lm_loss
from router_pipelines.training import checkpoint as ckpt


class Recorder(TrainerCallback):
    def __init__(self, stop_at: tuple[str, int] | None = None) -> None:
        self.calls: list[tuple] = []
        self.stop_at = stop_at

    def _stop(self, hook: str, step: int) -> bool:
        return self.stop_at == (hook, step)

    def on_evaluate(self, state, metrics):
        self.calls.append(("evaluate", state.global_step, sorted(metrics)))
        return self._stop("evaluate", state.global_step)

    def on_log(self, state, logs):
        self.calls.append(("log", state.global_step, "train_loss" in logs))

    def on_step_end(self, state, logs):
        self.calls.append(("step_end", state.global_step, sorted(logs)))
        return self._stop("step_end", state.global_step)

    def on_train_end(self, state):
        self.calls.append(("train_end", state.global_step))


def test_hooks_run_in_order_with_what_was_logged(make_config, model, train_data, eval_data):
    recorder = Recorder()
    config = make_config(max_steps=2, eval_steps=2, logging_steps=2)
    Trainer(
        model, causal_lm_loss, train_data, eval_data, config=config, callbacks=[recorder]
    ).train()
    train_keys = ["epoch", "grad_norm", "lr", "tokens_per_s", "train_loss"]
    assert recorder.calls == [
        ("step_end", 1, []),
        ("log", 2, False),  # the eval metrics: logged first, then on_evaluate
        ("evaluate", 2, ["eval_loss"]),
        ("log", 2, True),
        ("step_end", 2, sorted(["eval_loss", *train_keys])),
        ("train_end", 2),
    ]


@pytest.mark.parametrize("hook", ["step_end", "evaluate"])
def test_a_callback_stops_training_and_the_last_step_is_logged_and_saved(
    make_config, model, train_data, eval_data, hook
):
    recorder = Recorder(stop_at=(hook, 3))
    config = make_config(max_steps=10, eval_steps=1, logging_steps=5, save_at_end=True)
    result = Trainer(
        model, causal_lm_loss, train_data, eval_data, config=config, callbacks=[recorder]
    ).train()
    assert result.global_step == 3 and result.stopped_early
    assert [s for s, _ in result.history["train_loss"]] == [3]  # flushed at the stop
    assert [s for s, _ in ckpt.list_checkpoints(result.run_dir)] == [3]  # save_at_end
    assert recorder.calls[-1] == ("train_end", 3)


class ExtraFile(TrainerCallback):
    """Writes ``extra.txt`` into each checkpoint as it is written."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool]] = []

    def on_save(self, state, checkpoint, accelerator, model):
        # still being written: trainer_state.json (which makes it a checkpoint) comes last
        self.seen.append((state.global_step, (checkpoint / ckpt.TRAINER_STATE_NAME).exists()))
        if accelerator.is_main_process:
            (checkpoint / "extra.txt").write_text(f"step {state.global_step}")


def test_on_save_files_are_part_of_each_checkpoint(make_config, model, train_data):
    extra = ExtraFile()
    config = make_config(max_steps=4, save_steps=2, save_at_end=True)
    result = Trainer(model, causal_lm_loss, train_data, config=config, callbacks=[extra]).train()
    assert extra.seen == [(2, False), (4, False)]
    saved = ckpt.list_checkpoints(result.run_dir)
    assert [step for step, _ in saved] == [2, 4]
    for step, path in saved:
        assert (path / "extra.txt").read_text() == f"step {step}"


def test_callbacks_must_be_trainer_callbacks(make_config, model, train_data):
    with pytest.raises(ValueError, match=r"^callbacks: callbacks\[0\] must be a TrainerCallback"):
        Trainer(model, causal_lm_loss, train_data, config=make_config(), callbacks=[print])
    Trainer(tiny_gpt2(0), causal_lm_loss, train_data, config=make_config(), callbacks=[])
