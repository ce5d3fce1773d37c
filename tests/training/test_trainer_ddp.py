"""Two CPU processes (DDP over gloo) train like one process with the same global batch.

Launcher note (accelerate 1.15): ``accelerate launch --cpu --num_processes 2`` starts ONE
process (its CPU path only fans out through ``mpirun --mpirun_hostfile``). ``--multi_gpu``
starts 2 processes through torchrun; with ``TrainingConfig.cpu=True`` Accelerate then
picks MULTI_CPU with the gloo backend, also on a machine that has GPUs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_train_script import train
from safetensors.torch import load_file

SCRIPT = Path(__file__).with_name("ddp_train_script.py")
ACCELERATE = Path(sys.executable).with_name("accelerate")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    ddp_dir = tmp_path / "ddp"
    command = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",  # torchrun; the script's cpu=True makes it gloo on the CPU
        "--num_processes", "2",
        "--num_machines", "1",
        "--mixed_precision", "no",
        "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        str(SCRIPT),
        str(ddp_dir),
        "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HOME": str(tmp_path / "hf_home")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]

    _, single = train(str(tmp_path / "single"), batch_size=4)  # 1 process x 4 = 2 x 2
    ddp_weights = load_file(ddp_dir / "final.safetensors")
    single_weights = {k: v for k, v in single.model.state_dict().items() if k in ddp_weights}
    assert set(ddp_weights) == set(single_weights)
    torch.testing.assert_close(ddp_weights, single_weights, atol=1e-6, rtol=1e-5)

    reports = [json.loads((ddp_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["num_processes"] for r in reports] == [2, 2]
    assert [r["log_calls"] for r in reports] == [6, 0]  # 4 train logs + 2 evals, main only
    assert reports[0]["tokens_seen"] == single.tokens_seen == 4 * 2 * 4 * 16
    for report in reports:  # every process holds the reduced eval loss
        steps, losses = zip(*report["eval_loss"], strict=True)
        assert steps == (2, 4)
        assert losses == pytest.approx([v for _, v in single.history["eval_loss"]], rel=1e-5)
    # One run folder, named on rank 0 and broadcast: both processes wrote into it.
    run_dir = Path(reports[0]["run_dir"])
    assert reports[1]["run_dir"] == str(run_dir) and run_dir.parent == ddp_dir
    assert [p for p in ddp_dir.iterdir() if p.is_dir()] == [run_dir]
    # save_total_limit=1: one checkpoint, with the RNG states of both processes.
    checkpoints = sorted(p.name for p in run_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4"]
    files = {p.name for p in (run_dir / "checkpoint-4").iterdir()}
    assert {"random_states_0.pkl", "random_states_1.pkl", "trainer_state.json"} <= files
    state = json.loads((run_dir / "checkpoint-4" / "trainer_state.json").read_text())
    assert (state["global_step"], state["epoch"], state["global_batch_size"]) == (4, 2, 4)
    assert (run_dir / "best" / "model.safetensors").is_file()
    assert not list(run_dir.glob(".tmp-*"))
