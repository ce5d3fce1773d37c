"""Checkpoints: contents, exact resume, atomic writes, non-finite loss."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from accelerate import Accelerator
from training_tiny import Crash, SyntheticLM, crash_at, tiny_gpt2

from router_pipelines.training import NonFiniteLossError, Trainer, causal_lm_loss
from router_pipelines.training import checkpoint as ckpt
from router_pipelines.training.runs import find_latest_checkpoint
from router_pipelines.training.state import TrainerState


def _resume_config(make_config, tmp_path, name, **overrides):
    """Dropout on, shuffling, 3 epochs (16 examples, 2 x 2 micro-batches, 12 steps)."""
    values = dict(
        output_dir=str(tmp_path / name),
        max_steps=12,
        batch_size=2,
        gradient_accumulation_steps=2,
        scheduler="cosine",
        warmup_steps=2,
        save_steps=5,
        eval_steps=4,
        logging_steps=1,
    )
    values.update(overrides)
    return make_config(**values)


def _only_run_dir(output_dir: Path) -> Path:
    (run_dir,) = [p for p in Path(output_dir).iterdir() if not p.name.startswith(".")]
    return run_dir


def _run(config, loss_fn=causal_lm_loss, seed=0):
    model = tiny_gpt2(seed, dropout=0.1)
    data, eval_data = SyntheticLM(16, seed=1), SyntheticLM(6, seed=2)
    return Trainer(model, loss_fn, data, eval_data, config=config).train()


@pytest.mark.parametrize(
    ("interruption", "scheduler"),
    # Stopping at max_steps=6 then asking for 12 only leaves the run unchanged when the
    # schedule does not depend on max_steps, hence "constant" (with warmup) there.
    [("crash", "cosine"), ("max_steps", "constant")],
)
def test_resume_is_exact(make_config, tmp_path, interruption, scheduler):
    def config(name, **overrides):
        return _resume_config(make_config, tmp_path, name, scheduler=scheduler, **overrides)

    reference = _run(config("reference"))
    if interruption == "crash":
        with pytest.raises(Crash):
            _run(config("resumed"), loss_fn=crash_at(7))  # last checkpoint: 5, mid-epoch 1
        assert find_latest_checkpoint(tmp_path / "resumed").name == "checkpoint-5"
    else:
        first = _run(config("resumed", max_steps=6, save_at_end=True))
        assert first.last_checkpoint.endswith("checkpoint-6")
    # A different initialisation proves the weights come from the checkpoint.
    resumed = _run(config("resumed", resume_from_checkpoint="latest"), seed=123)
    assert resumed.global_step == 12
    assert Path(resumed.run_dir) == _only_run_dir(tmp_path / "resumed")  # continued in its folder
    torch.testing.assert_close(
        resumed.model.state_dict(), reference.model.state_dict(), atol=0, rtol=0
    )
    assert resumed.tokens_seen == reference.tokens_seen
    assert resumed.epochs_completed == reference.epochs_completed == 3.0
    assert resumed.best_step == reference.best_step
    assert resumed.history["eval_loss"] == reference.history["eval_loss"]
    assert resumed.history["train_loss"] == reference.history["train_loss"]


def test_checkpoint_contents(make_config, tmp_path, caplog):
    config = _resume_config(make_config, tmp_path, "run", max_steps=5, eval_steps=5)
    with caplog.at_level("WARNING"):
        result = _run(config)
    path = Path(result.run_dir) / "checkpoint-5"
    # the tied LM head is stored once, without Accelerate's "check while reloading" warning
    saved = safetensors.torch.load_file(path / "model.safetensors")
    assert "transformer.wte.weight" in saved and "lm_head.weight" not in saved
    assert "Removed shared tensor" not in caplog.text
    names = {p.name for p in path.iterdir()}
    assert {
        "model.safetensors",
        "optimizer.bin",
        "scheduler.bin",
        "random_states_0.pkl",
        "config.json",
        "run_config.json",
        "trainer_state.json",
    } <= names
    state = json.loads((path / "trainer_state.json").read_text())
    assert state["global_step"] == 5
    assert (state["epoch"], state["batch_in_epoch"]) == (1, 2)  # 10 of 8 micro-batches/epoch
    assert state["tokens_seen"] == 5 * 4 * 16
    assert state["best_step"] == 5 and state["patience_counter"] == 0
    assert state["best_metric"] == result.best_metric == result.best_eval_loss
    assert state["saved_at"] == pytest.approx(time.time(), abs=60)
    assert [s for s, _ in state["history"]["train_loss"]] == [1, 2, 3, 4, 5]
    saved_config = json.loads((path / "config.json").read_text())
    assert saved_config["max_steps"] == 5 and saved_config["output_dir"] == config.output_dir
    settings = json.loads((path / "run_config.json").read_text())
    assert settings["training"]["learning_rate"] == config.learning_rate
    assert "output_dir" not in settings["training"] and settings["run_config"] == {}
    assert not list(Path(result.run_dir).glob(".tmp-*"))


def _fail_on_second_save(monkeypatch, where):
    """Make the second checkpoint save raise half-way, at ``where``."""
    saves = {"count": 0}
    if where == "accelerate_save_state":
        original = Accelerator.save_state

        def save_state(self, output_dir=None, **kwargs):
            saves["count"] += 1
            if saves["count"] == 2:
                (Path(output_dir) / "model.safetensors").write_bytes(b"half a file")
                raise OSError("disk full")
            return original(self, output_dir, **kwargs)

        monkeypatch.setattr(Accelerator, "save_state", save_state)
    else:
        original_write = ckpt.write_json

        def write_json(path, payload):
            if path.name == ckpt.TRAINER_STATE_NAME:
                saves["count"] += 1
                if saves["count"] == 2:
                    path.write_text('{"global_st')
                    raise OSError("disk full")
            original_write(path, payload)

        monkeypatch.setattr(ckpt, "write_json", write_json)


@pytest.mark.parametrize("where", ["accelerate_save_state", "trainer_state"])
def test_a_failed_save_leaves_the_previous_checkpoint(make_config, tmp_path, monkeypatch, where):
    def config(name, **overrides):
        values = {"max_steps": 8, "save_steps": 3, **overrides}
        return _resume_config(make_config, tmp_path, name, **values)

    reference = _run(config("reference"))
    _fail_on_second_save(monkeypatch, where)
    with pytest.raises(OSError, match="disk full"):
        _run(config("run"))  # checkpoint-3 written, checkpoint-6 fails half-way
    monkeypatch.undo()
    root = _only_run_dir(tmp_path / "run")
    assert not (root / "checkpoint-6").exists()
    assert (root / ".tmp-checkpoint-6").is_dir()  # the half-written attempt, never published
    # A half-copied folder without trainer_state.json is not a checkpoint either.
    shutil.copytree(root / "checkpoint-3", root / "checkpoint-9")
    (root / "checkpoint-9" / ckpt.TRAINER_STATE_NAME).unlink()
    assert ckpt.last_checkpoint(root) == root / "checkpoint-3"
    assert find_latest_checkpoint(tmp_path / "run") == root / "checkpoint-3"
    resumed = _run(config("run", resume_from_checkpoint="latest", save_steps=None), seed=7)
    torch.testing.assert_close(
        resumed.model.state_dict(), reference.model.state_dict(), atol=0, rtol=0
    )
    # Removed when the resumed run started (save_steps=None: no save at step 6 replaced it).
    assert not list(root.glob(".tmp-*"))


def test_non_finite_loss_stops_and_keeps_checkpoints(make_config, tmp_path):
    def nan_at_step_3(model, batch, step):
        loss, metrics = causal_lm_loss(model, batch, step)
        return (loss * float("nan") if step == 3 else loss), metrics

    config = _resume_config(
        make_config, tmp_path, "run", max_steps=8, save_steps=2, eval_steps=None
    )
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step 3 ") as err:
        _run(config, loss_fn=nan_at_step_3)
    assert isinstance(err.value, RuntimeError)
    root = _only_run_dir(Path(config.output_dir))
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2]
    assert ckpt.load_trainer_state(root / "checkpoint-2").global_step == 2
    resumed = _run(
        _resume_config(
            make_config,
            tmp_path,
            "run",
            max_steps=8,
            save_steps=2,
            eval_steps=None,
            resume_from_checkpoint="latest",
        )
    )
    assert resumed.global_step == 8
    assert torch.isfinite(next(resumed.model.parameters())).all()


def test_resume_latest_without_checkpoint_starts_fresh(make_config, tmp_path, caplog):
    config = _resume_config(
        make_config, tmp_path, "run", max_steps=2, save_steps=None, resume_from_checkpoint="latest"
    )
    with caplog.at_level("INFO", logger="router_pipelines.training.runs"):
        result = _run(config)
    assert result.global_step == 2
    assert "no checkpoint" in caplog.text


def test_resume_from_a_missing_path_is_an_error(make_config, tmp_path):
    config = _resume_config(
        make_config, tmp_path, "run", resume_from_checkpoint=str(tmp_path / "nope")
    )
    with pytest.raises(ValueError, match="^resume_from_checkpoint: .* is not a directory"):
        _run(config)


def test_resuming_a_finished_run_changes_nothing(make_config, tmp_path):
    first = _run(_resume_config(make_config, tmp_path, "run", max_steps=4, save_at_end=True))
    again = _run(
        _resume_config(make_config, tmp_path, "run", max_steps=4, resume_from_checkpoint="latest"),
        seed=5,
    )
    assert again.global_step == 4
    torch.testing.assert_close(again.model.state_dict(), first.model.state_dict(), atol=0, rtol=0)


def test_a_new_global_batch_keeps_the_example_position():
    """Another process count on resume: the data position is kept in examples."""
    state = TrainerState(epoch=1, batch_in_epoch=3, global_batch_size=4)  # 12 examples in
    moved = state.moved_to(global_batch_size=2, batches_per_epoch=8)
    assert (moved.epoch, moved.batch_in_epoch, moved.global_batch_size) == (1, 6, 2)
    rounded = TrainerState(batch_in_epoch=3, global_batch_size=4).moved_to(8, 10)
    assert rounded.batch_in_epoch == 1  # 12 examples = 1.5 batches of 8: rounded down
    at_end = TrainerState(epoch=0, batch_in_epoch=4, global_batch_size=2).moved_to(1, 8)
    assert (at_end.epoch, at_end.batch_in_epoch) == (1, 0)  # 8 of 8 batches: next epoch


def test_resume_from_more_processes_maps_the_data_position(make_config, tmp_path, caplog):
    """A checkpoint as 2 processes x batch 2 would write it, resumed by 1 process x batch 2."""

    def config(**overrides):
        return _resume_config(
            make_config, tmp_path, "run", gradient_accumulation_steps=1, eval_steps=None,
            batch_size=2, scheduler="constant", **overrides,
        )  # fmt: skip

    first = _run(config(max_steps=6, save_at_end=True))  # 12 of 16 examples in epoch 0
    state_file = Path(first.last_checkpoint) / ckpt.TRAINER_STATE_NAME
    state = json.loads(state_file.read_text())
    assert (state["batch_in_epoch"], state["global_batch_size"]) == (6, 2)
    state_file.write_text(json.dumps({**state, "batch_in_epoch": 3, "global_batch_size": 4}))
    with caplog.at_level("WARNING", logger="router_pipelines.training.state"):
        trainer = Trainer(
            tiny_gpt2(0),
            causal_lm_loss,
            SyntheticLM(16, seed=1),
            config=config(max_steps=8, resume_from_checkpoint="latest"),
        )
        result = trainer.train()
    assert "global batch 4 -> 2; data position mapped to 6 batches (exact)" in caplog.text
    # Steps 7 and 8 read examples 12..15 of epoch 0 (batches 7 and 8 of 8): epoch 1 starts.
    assert result.epochs_completed == 1.0
    assert result.tokens_seen == 8 * 2 * 16
