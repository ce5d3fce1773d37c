"""Run folders, `latest`, resume refusing changed settings, stale temporaries, precision."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from training_tiny import Crash, SyntheticLM, crash_at, tiny_gpt2

from router_pipelines.config import config_from_dict
from router_pipelines.training import (
    RESULT_NEUTRAL_FIELDS,
    Trainer,
    TrainingConfig,
    causal_lm_loss,
    describe_precision,
    find_latest_checkpoint,
    precision_plan,
    result_affecting_fields,
)
from router_pipelines.training import checkpoint as ckpt


def _config(make_config, tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        batch_size=2,
        scheduler="cosine",
        save_steps=1,
        save_total_limit=2,
        eval_steps=None,
    )
    return make_config(**{**values, **overrides})


def _run(config, loss_fn=causal_lm_loss, seed=0, **kwargs):
    model = tiny_gpt2(seed, dropout=0.1)
    return Trainer(model, loss_fn, SyntheticLM(16, seed=1), config=config, **kwargs).train()


def _run_dirs(output_dir) -> list[Path]:
    return sorted(p for p in Path(output_dir).iterdir() if p.is_dir())


def test_a_fresh_run_never_touches_nor_resumes_an_earlier_run(make_config, tmp_path):
    """The measured bug: an earlier run's higher-step checkpoints in the same output_dir made
    rotation delete the new run's checkpoints, and `latest` resumed the earlier run."""
    earlier = _run(_config(make_config, tmp_path, max_steps=8, save_steps=4))
    reference = _run(_config(make_config, tmp_path / "ref"))
    with pytest.raises(Crash):
        _run(_config(make_config, tmp_path), loss_fn=crash_at(3))  # saved 1..3, limit 2
    earlier_dir = Path(earlier.run_dir)
    (crashed_dir,) = [p for p in _run_dirs(tmp_path / "out") if p != earlier_dir]
    assert [s for s, _ in ckpt.list_checkpoints(earlier_dir)] == [4, 8]  # untouched
    assert [s for s, _ in ckpt.list_checkpoints(crashed_dir)] == [2, 3]
    # `latest` is the newest save (crashed_dir's step 3), not the highest step (step 8).
    assert find_latest_checkpoint(tmp_path / "out") == crashed_dir / "checkpoint-3"
    resumed = _run(_config(make_config, tmp_path, resume_from_checkpoint="latest"), seed=9)
    assert Path(resumed.run_dir) == crashed_dir
    assert resumed.global_step == 4
    torch.testing.assert_close(
        resumed.model.state_dict(), reference.model.state_dict(), atol=0, rtol=0
    )
    assert [s for s, _ in ckpt.list_checkpoints(earlier_dir)] == [4, 8]


def _fake_checkpoint(run_dir: Path, step: int, saved_at: float | None) -> Path:
    path = run_dir / f"checkpoint-{step}"
    path.mkdir(parents=True)
    state = {"global_step": step} | ({} if saved_at is None else {"saved_at": saved_at})
    (path / ckpt.TRAINER_STATE_NAME).write_text(json.dumps(state))
    return path


def test_latest_is_the_newest_save_and_never_a_temporary(tmp_path):
    root = tmp_path / "out"
    high_step = _fake_checkpoint(root / "run-a", 800, saved_at=1000.0)
    newer = _fake_checkpoint(root / "run-b", 20, saved_at=2000.0)
    _fake_checkpoint(root / "run-b", 30, saved_at=None).joinpath(ckpt.TRAINER_STATE_NAME).unlink()
    _fake_checkpoint(root / "run-b", 99, saved_at=9000.0).rename(
        root / "run-b" / ".tmp-checkpoint-99"
    )
    _fake_checkpoint(root / ".tmp-run-c", 5, saved_at=9000.0)
    assert find_latest_checkpoint(root) == newer
    assert find_latest_checkpoint(root, "run-a") == high_step  # run_name narrows the search
    (high_step / ckpt.TRAINER_STATE_NAME).write_text(json.dumps({"saved_at": 3000.0}))
    assert find_latest_checkpoint(root) == high_step  # the recorded save time decides
    assert find_latest_checkpoint(tmp_path / "missing") is None


def test_resume_refuses_other_settings_and_names_every_difference(make_config, tmp_path):
    run_config = {"model": {"preset": "tiny", "n_layer": 2}, "data": "fp-1"}
    first = _run(_config(make_config, tmp_path, learning_rate=1e-2), run_config=run_config)
    changed = _config(
        make_config,
        tmp_path,
        learning_rate=5e-3,
        max_steps=6,
        resume_from_checkpoint="latest",
        logging_steps=3,  # result-neutral: not reported
    )
    other_run = {"model": {"preset": "tiny", "n_layer": 4}, "data": "fp-1", "family": "x"}
    with pytest.raises(ValueError) as err:
        Trainer(tiny_gpt2(0), causal_lm_loss, SyntheticLM(16), config=changed, run_config=other_run)
    checkpoint = Path(first.run_dir) / "checkpoint-4"
    assert str(err.value) == (
        f"resume_from_checkpoint: checkpoint {checkpoint} was written with a different "
        "configuration: max_steps 4 -> 6, learning_rate 0.01 -> 0.005, family <absent> -> x, "
        "model.n_layer 2 -> 4; start a fresh run or resume with the same settings"
    )
    explicit = _config(
        make_config, tmp_path, learning_rate=1e-2, resume_from_checkpoint=str(checkpoint)
    )
    with pytest.raises(
        ValueError, match=r"configuration: family <absent> -> x, model\.n_layer 2 -> 4;"
    ):
        Trainer(
            tiny_gpt2(0), causal_lm_loss, SyntheticLM(16), config=explicit, run_config=other_run
        )
    Trainer(tiny_gpt2(0), causal_lm_loss, SyntheticLM(16), config=explicit, run_config=run_config)


def test_result_neutral_settings_may_change_on_resume(make_config, tmp_path):
    reference = _run(_config(make_config, tmp_path / "ref", max_steps=6))
    with pytest.raises(Crash):
        _run(_config(make_config, tmp_path, max_steps=6), loss_fn=crash_at(3))
    neutral = _config(
        make_config,
        tmp_path,
        max_steps=6,
        resume_from_checkpoint="latest",
        logging_steps=2,
        save_steps=None,
        save_total_limit=None,
        progress_bar=True,
        gradient_checkpointing=True,
        ddp_find_unused_parameters=True,
    )
    resumed = _run(neutral, seed=3)
    torch.testing.assert_close(
        resumed.model.state_dict(), reference.model.state_dict(), atol=0, rtol=0
    )


def test_gradient_checkpointing_leaves_the_weights_bit_identical(make_config, tmp_path):
    """Why gradient_checkpointing is result-neutral (RESULT_NEUTRAL_FIELDS): dropout on."""
    plain = _run(_config(make_config, tmp_path / "a", save_steps=None))
    checkpointed = _run(
        _config(make_config, tmp_path / "b", save_steps=None, gradient_checkpointing=True)
    )
    torch.testing.assert_close(
        checkpointed.model.state_dict(), plain.model.state_dict(), atol=0, rtol=0
    )


def test_a_resumed_run_removes_its_stale_temporaries_only(make_config, tmp_path):
    first = _run(_config(make_config, tmp_path, max_steps=2))
    run_dir, other = Path(first.run_dir), tmp_path / "out" / "other-run"
    shutil.copytree(run_dir / "checkpoint-2", run_dir / ".tmp-checkpoint-3")  # killed mid-save
    (run_dir / ".old-best").mkdir()
    (other / ".tmp-checkpoint-1").mkdir(parents=True)
    resumed = _run(_config(make_config, tmp_path, max_steps=2, resume_from_checkpoint="latest"))
    assert resumed.global_step == 2
    assert not list(run_dir.glob(".tmp-*")) and not list(run_dir.glob(".old-*"))
    assert (other / ".tmp-checkpoint-1").is_dir()  # another run's folder is not this run's


def test_run_name_gives_the_folder_and_guards_it(make_config, tmp_path):
    named = _run(_config(make_config, tmp_path, max_steps=2, run_name="exp1"))
    assert named.run_dir == str(tmp_path / "out" / "exp1")
    with pytest.raises(ValueError, match=r"^run_name: .*exp1' already holds a run's checkpoints"):
        Trainer(
            tiny_gpt2(0),
            causal_lm_loss,
            SyntheticLM(16),
            config=_config(make_config, tmp_path, run_name="exp1"),
        )
    checkpoint = str(Path(named.run_dir) / "checkpoint-2")
    conflicting = _config(make_config, tmp_path, run_name="exp2", resume_from_checkpoint=checkpoint)
    with pytest.raises(
        ValueError, match=r"^run_name: 'exp2', but resume_from_checkpoint .* 'exp1'"
    ):
        Trainer(tiny_gpt2(0), causal_lm_loss, SyntheticLM(16), config=conflicting)
    fresh = _run(
        _config(
            make_config, tmp_path, max_steps=2, run_name="exp2", resume_from_checkpoint="latest"
        )
    )
    assert fresh.run_dir == str(tmp_path / "out" / "exp2")  # nothing to resume in exp2: fresh
    with pytest.raises(
        ValueError, match="^resume_from_checkpoint: .* is not a complete checkpoint"
    ):
        Trainer(
            tiny_gpt2(0),
            causal_lm_loss,
            SyntheticLM(16),
            config=_config(make_config, tmp_path, resume_from_checkpoint=named.run_dir),
        )


@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "best", "checkpoint-3", "x y"])
def test_bad_run_names_are_refused(bad):
    with pytest.raises(ValueError, match=r"^pretrain\.training\.run_name"):
        config_from_dict(TrainingConfig, {"output_dir": "o", "run_name": bad}, "pretrain.training")


def test_an_output_dir_that_is_a_file_is_an_error(tmp_path):
    (tmp_path / "taken").write_text("not a folder")
    with pytest.raises(ValueError, match=r"^pretrain\.training\.output_dir: .*taken' is a file"):
        config_from_dict(
            TrainingConfig, {"output_dir": str(tmp_path / "taken")}, "pretrain.training"
        )
    with pytest.raises(ValueError, match=r"^output_dir: .* is below the file .*taken"):
        TrainingConfig(output_dir=str(tmp_path / "taken" / "run"))


def test_precision_is_described(make_config):
    fp16 = make_config(mixed_precision="fp16")
    assert precision_plan(fp16).effective == "no"
    assert describe_precision(fp16) == (
        "mixed_precision 'fp16' on cpu: training runs in fp32 (Accelerate has no fp16 autocast "
        "on the CPU)"
    )
    assert (
        precision_plan(fp16, "cuda").effective == "fp16" and not precision_plan(fp16, "cuda").note
    )
    assert describe_precision(make_config(mixed_precision="auto")) == (
        "mixed_precision 'auto' on cpu: training runs in fp32"
    )


@pytest.mark.parametrize(
    ("requested", "warning"),
    [
        ("fp16", "mixed_precision 'fp16' on cpu: training runs in fp32 (Accelerate has no fp16"),
        ("bf16", "mixed_precision 'bf16' on cpu: training runs in bf16 autocast (bf16 autocast"),
        ("no", None),
    ],
)
def test_the_trainer_warns_about_the_precision_it_really_uses(
    make_config, train_data, caplog, requested, warning
):
    with caplog.at_level(logging.WARNING, logger="router_pipelines.training.engine"):
        Trainer(
            tiny_gpt2(0), causal_lm_loss, train_data, config=make_config(mixed_precision=requested)
        )
    messages = [r.getMessage() for r in caplog.records if r.name.endswith("engine")]
    if warning is None:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(warning), messages


def test_result_affecting_fields_leave_out_the_neutral_ones(make_config):
    config = make_config(mixed_precision="auto", metric_for_best_model="accuracy")
    fields = result_affecting_fields(config)
    assert not set(fields) & set(RESULT_NEUTRAL_FIELDS)
    assert set(fields) | set(RESULT_NEUTRAL_FIELDS) == set(TrainingConfig.__dataclass_fields__)
    assert fields["mixed_precision"] == "no"  # auto, resolved for this CPU
    assert fields["metric_for_best_model"] == "eval_accuracy"
    assert fields["greater_is_better"] is True
    assert fields["adam_betas"] == [0.9, 0.95]  # JSON-ready
    assert json.loads(json.dumps(fields)) == fields
