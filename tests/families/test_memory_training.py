"""The memory family on the shared engine: exact resume, frozen base, per-group learning rates,
gradient checkpointing, and two DDP processes with unused chapters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from memory_tiny import MaskedChats, tiny_memory_model, tiny_training
from safetensors.torch import load_file

from router_pipelines.families.memory import make_memory_loss, utilisation_callback
from router_pipelines.pipelines.memory.training import calibrate_routers, train_memory_model
from router_pipelines.training import Trainer

SCRIPT = Path(__file__).with_name("memory_ddp_script.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")


class Crash(Exception):
    pass


@pytest.mark.parametrize("router_input", ["mean", "standardised"])
def test_resume_mid_run_equals_an_uninterrupted_run(tmp_path, router_input):
    data, eval_sets = MaskedChats(24, seed=1), {"chat": MaskedChats(8, seed=2)}
    reference, _ = train_memory_model(
        tiny_memory_model(router_input=router_input),
        tiny_training(str(tmp_path / "ref")),
        data,
        eval_sets,
        lora=False,
    )
    loss = make_memory_loss({"load_balance": 0.05})

    def crash_at_4(model, batch, step):
        if step == 4:
            raise Crash
        return loss(model, batch, step)

    config = tiny_training(str(tmp_path / "out"))
    crashed = tiny_memory_model(router_input=router_input)
    calibrate_routers(crashed, data, config)
    with pytest.raises(Crash):
        Trainer(
            crashed,
            crash_at_4,
            data,
            eval_sets,
            config=config.engine_config(lora=False),
            eval_callbacks=[utilisation_callback("chat", 2)],
        ).train()
    (run_dir,) = (tmp_path / "out").iterdir()
    saved = load_file(run_dir / "checkpoint-4" / "model.safetensors")
    assert saved and all(name.startswith("memory.") for name in saved)  # trainable only
    resumed, _ = train_memory_model(
        tiny_memory_model(seed=7, router_input=router_input),  # the checkpoint overwrites it
        tiny_training(str(tmp_path / "out"), resume_from_checkpoint="latest"),
        data,
        eval_sets,
        lora=False,
    )
    assert resumed.global_step == 6
    torch.testing.assert_close(
        resumed.model.state_dict(), reference.model.state_dict(), atol=0, rtol=0
    )
    assert resumed.history["eval_chat_loss"] == reference.history["eval_chat_loss"]
    assert (
        resumed.history["eval_utilisation_entropy"] == reference.history["eval_utilisation_entropy"]
    )


def test_lora_and_memory_train_at_their_own_rates_and_the_base_stays_bit_identical(tmp_path):
    model = tiny_memory_model(lora=True)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    config = tiny_training(str(tmp_path / "run"), scheduler="constant", warmup_steps=0)
    result, timer = train_memory_model(
        model, config, MaskedChats(24, seed=1), {"chat": MaskedChats(8, seed=2)}, lora=True
    )
    for name, param in result.model.named_parameters():
        if name in frozen:
            assert torch.equal(param, frozen[name]), name
        else:
            assert not torch.equal(param, start[name]), name  # every trainable part moved
    assert {v for _, v in timer.history["lr_memory"]} == {1e-2}
    assert {v for _, v in timer.history["lr_lora"]} == {5e-3}
    assert "lr_base" not in timer.history  # the frozen base has no optimizer group
    assert all(v > 0 for _, v in timer.history["step_time_s"])
    assert {"train_ce", "train_load_balance", "train_auxiliary", "train_z_loss"} <= set(
        result.history
    )
    assert result.history["eval_dead_chapters"][-1][1] >= 0


def test_gradient_checkpointing_trains_the_memory_to_the_same_weights(tmp_path):
    runs = []
    for checkpointing in (False, True):
        config = tiny_training(
            str(tmp_path / str(checkpointing)), max_steps=3, eval_steps=None,
            gradient_checkpointing=checkpointing, save_steps=None, save_best_model=False,
        )  # fmt: skip
        result, _ = train_memory_model(
            tiny_memory_model(), config, MaskedChats(12, seed=1), {}, lora=False
        )
        runs.append(result.model.memory.state_dict())
    start = tiny_memory_model().memory.state_dict()
    assert not torch.equal(runs[1]["bank.tokens"], start["bank.tokens"])
    torch.testing.assert_close(runs[1], runs[0], atol=1e-6, rtol=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_ddp_processes_train_with_unpicked_chapters(tmp_path):
    command = [
        str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()), str(SCRIPT), str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    reports = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in reports] == [2, 2]
    assert reports[0]["weights_digest"] == reports[1]["weights_digest"]  # one model
    # top-1 of 8 chapters with 2 sequences per process: most chapters are unpicked each step.
    assert all(r["max_chapters_picked_per_step"] < 8 for r in reports)
    assert reports[0]["eval_counts"] == reports[1]["eval_counts"]  # reduced over processes
    assert sum(map(sum, reports[0]["eval_counts"])) == 2 * 8  # 2 layers x 8 eval sequences
    # the seed's files, gathered from both processes and written once by the main process
    (run_dir,) = (p for p in tmp_path.iterdir() if p.is_dir() and p.name != "hf_home")
    for step in (2, 4):
        folder = run_dir / f"checkpoint-{step}"
        assert (folder / "config.yaml").is_file() and (
            folder / "consolidated.safetensors"
        ).is_file()


def test_the_lr_finder_sweeps_memory_lr_and_leaves_the_model_unchanged(tmp_path):
    from router_pipelines.pipelines.memory.training import run_lr_finder
    from router_pipelines.pipelines.pretrain.config import LRFinderConfig

    model = tiny_memory_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    training = tiny_training(str(tmp_path / "run"))
    finder = LRFinderConfig(
        enabled=True, start_lr=1e-4, end_lr=1.0, num_steps=6, use_suggestion=True
    )
    result = run_lr_finder(model, MaskedChats(24, seed=1), training, finder, lora=False)
    assert result.lrs[0] == pytest.approx(1e-4) and len(result.lrs) <= 6
    torch.testing.assert_close(model.state_dict(), before, atol=0, rtol=0)
    assert training.memory_lr == pytest.approx(result.suggestion)
    assert 1e-4 <= training.memory_lr <= 1.0


def test_every_checkpoint_has_the_seeds_layout_and_a_consolidated_file_that_rebuilds_the_model(
    tmp_path,
):
    import yaml
    from tiny_models import tiny_gpt2

    from router_pipelines.models.memory import LoraSettings
    from router_pipelines.pipelines.memory.checkpoint_files import load_consolidated, seed_config

    model = tiny_memory_model(lora=True)
    config = tiny_training(str(tmp_path / "run"), max_steps=5, save_total_limit=None)
    layout = seed_config(model.memory_config, LoraSettings(enabled=True, r=4), config)
    result, _ = train_memory_model(
        model, config, MaskedChats(24, seed=1), {"chat": MaskedChats(8, seed=2)}, lora=True,
        seed_config=layout,
    )  # fmt: skip
    (run_dir,) = (tmp_path / "run").iterdir()
    steps = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
    assert steps == [2, 4, 5]  # save_steps 2, and the end of training
    for step in steps:
        folder = run_dir / f"checkpoint-{step}"
        names = {p.name for p in folder.iterdir()}
        assert {"config.yaml", "trainer_state.json", "model.safetensors", "optimizer.bin"} <= names
        assert "scheduler.bin" in names and "consolidated.safetensors" in names
        written = yaml.safe_load((folder / "config.yaml").read_text())
        assert written["memory"]["top_k"] == 2 and written["lora"]["r"] == 4
        assert written["training"]["memory_lr"] == config.memory_lr
    # the last checkpoint's consolidated file is the trained model, base and LoRA included
    torch.manual_seed(123)
    rebuilt = load_consolidated(run_dir / "checkpoint-5", tiny_gpt2())
    batch = MaskedChats(4, seed=3)[0]
    ids = batch["input_ids"][None]
    torch.testing.assert_close(
        rebuilt(input_ids=ids).logits, result.model.eval()(input_ids=ids).logits
    )
    # the engine's own checkpoint stays trainable-only
    assert all(
        "lora_" in n or n.startswith("memory.")
        for n in load_file(run_dir / "checkpoint-5" / "model.safetensors")
    )
