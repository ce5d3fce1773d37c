"""Trains the tiny GPT-2 under ``accelerate launch``; run by test_trainer_ddp.py.

Usage: accelerate launch --multi_gpu --num_processes 2 ddp_train_script.py OUTPUT_DIR BATCH_SIZE
(``cpu=True`` in the config: DDP over gloo on the CPU; see test_trainer_ddp.py)
Writes OUTPUT_DIR/final.safetensors (main process) and OUTPUT_DIR/rank<i>.json (every
process: how often log_fn ran there, the eval-loss history).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from training_tiny import SyntheticLM, tiny_gpt2  # noqa: E402

from router_pipelines.training import (  # noqa: E402
    Trainer,
    TrainingConfig,
    TrainResult,
    causal_lm_loss,
)


def ddp_config(output_dir: str, batch_size: int) -> TrainingConfig:
    """4 steps x 2 micro-batches over 16 examples: 2 epochs; eval and saves every 2 steps."""
    return TrainingConfig(
        output_dir=output_dir,
        max_steps=4,
        batch_size=batch_size,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        adam_eps=1e-4,  # see test_gradient_accumulation_matches_a_bigger_batch
        warmup_steps=1,
        cpu=True,
        mixed_precision="no",
        eval_steps=2,
        eval_batch_size=batch_size,
        save_steps=2,
        save_total_limit=1,
        logging_steps=1,
        progress_bar=False,
    )


def train(output_dir: str, batch_size: int, log_fn=None) -> tuple[Trainer, TrainResult]:
    trainer = Trainer(
        tiny_gpt2(0),
        causal_lm_loss,
        SyntheticLM(16, seed=1),
        SyntheticLM(8, seed=2),
        config=ddp_config(output_dir, batch_size),
        log_fn=log_fn,
    )
    return trainer, trainer.train()


def main() -> None:
    output_dir, batch_size = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    log_calls = []
    trainer, result = train(output_dir, batch_size, lambda m, s: log_calls.append(s))
    accelerator = trainer.accelerator
    if accelerator.is_main_process:
        weights = {k: v.detach().clone().contiguous() for k, v in result.model.state_dict().items()}
        save_file(weights, str(Path(output_dir) / "final.safetensors"))
    report = {
        "num_processes": accelerator.num_processes,
        "log_calls": len(log_calls),
        "eval_loss": result.history["eval_loss"],
        "global_step": result.global_step,
        "tokens_seen": result.tokens_seen,
        "run_dir": result.run_dir,
    }
    (Path(output_dir) / f"rank{accelerator.process_index}.json").write_text(json.dumps(report))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
