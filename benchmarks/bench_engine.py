"""Step time of the training engine against a bare PyTorch loop and transformers' ``Trainer``.

All loops train the same model (same preset, same init seed) on the same random-token batches
in the same order, on the CPU in fp32, with the same torch thread count (1 by default), in one
process:

* ``bare``: ``DataLoader`` + ``AdamW`` (decay on >= 2-D params, like the engine) +
  ``transformers.get_scheduler`` + ``clip_grad_norm_`` + ``zero_grad`` +
  ``model(**batch).loss.backward()``; nothing else.
* ``engine``: ``router_pipelines.training.Trainer`` with checkpoints, evaluation, the progress
  bar and logging off (``logging_steps = max_steps``: one log at the end).
* ``engine+log``: the same with the progress bar on and a train log every ``--log-every`` steps.
* ``hf_trainer``: ``transformers.Trainer`` with ``optim="adamw_torch"`` (the same AdamW as the
  others), no saving, evaluation, reporting or tqdm.

Step time = the interval between the ends of consecutive ``AdamW.step()`` calls (an optimizer
step post-hook on the torch optimizer inside every loop), so it covers data loading, forward,
backward, clipping, scheduler, zero_grad and whatever bookkeeping a loop does; the first
``--warmup`` steps are dropped. Each round runs every loop once (the order rotates per round);
the reported step time is the median over rounds of each round's median, and the overhead is the
median over rounds of the paired ratio ``loop / bare - 1`` (paired rounds ran under similar load).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

import common
import numpy as np
import pandas as pd
import torch
import transformers
from torch.utils.data import DataLoader, Dataset, Subset

NAME = "engine"
LOOPS = ("bare", "engine", "engine+log", "hf_trainer")
OVERHEAD_TARGET = 0.05  # engine / bare - 1
LEARNING_RATE, WEIGHT_DECAY, BETAS, MAX_GRAD_NORM = 1e-3, 0.1, (0.9, 0.95), 1.0


def build_model(preset: str, vocab_size: int, seed: int) -> torch.nn.Module:
    """A from-scratch GPT-2 of ``preset``, initialised under ``seed`` (as ``build_causal_lm``)."""
    from transformers import AutoModelForCausalLM

    from router_pipelines.models.presets import ModelConfig, transformers_config

    # The ids of the project's BPE specials (EOS, BOS, PAD = 0, 1, 2), not GPT-2's 50256.
    special_ids = {"eos_token_id": 0, "bos_token_id": 1, "pad_token_id": 2}
    hf_config = transformers_config(ModelConfig(preset=preset), vocab_size, special_ids)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(hf_config)


def random_token_dataset(examples: int, seq_len: int, vocab_size: int, seed: int) -> Dataset:
    """Seeded random token rows in the project's ``TokenBlockDataset`` format."""
    from router_pipelines.data.torch_dataset import TokenBlockDataset

    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(examples, seq_len), dtype=np.int64)
    frame = pd.DataFrame(
        {
            "input_ids": ids.tolist(),
            "labels": ids.tolist(),
            "attention_mask": [[1] * seq_len] * examples,
        }
    )
    return TokenBlockDataset(frame, seq_len)


class StepClock:
    """Timestamps of the end of every ``optimizer.step()`` (a torch step post-hook)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def attach(self, optimizer: torch.optim.Optimizer) -> None:
        inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper holds the AdamW
        inner.register_step_post_hook(lambda *_: self.stamps.append(time.perf_counter()))

    def step_seconds(self, warmup: int) -> list[float]:
        """Intervals between consecutive step ends, without the first ``warmup`` steps."""
        intervals = np.diff(self.stamps).tolist()
        return intervals[max(warmup - 1, 0) :]


def run_bare(model, dataset, order, cfg: dict[str, Any], clock: StepClock) -> float:
    """The reference loop; returns the mean training loss over all steps."""
    from transformers import get_scheduler

    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=LEARNING_RATE,
        betas=BETAS,
    )
    scheduler = get_scheduler(
        "cosine", optimizer, num_warmup_steps=cfg["lr_warmup"], num_training_steps=cfg["max_steps"]
    )
    clock.attach(optimizer)
    loader = DataLoader(Subset(dataset, order), batch_size=cfg["batch_size"], drop_last=True)
    model.train()
    loss_sum = torch.zeros(())
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += loss.detach()
    return float(loss_sum) / len(loader)


def run_engine(model, dataset, cfg: dict[str, Any], clock: StepClock, logging: bool) -> float:
    """The project's engine; returns the mean training loss over all steps."""
    from router_pipelines.training import Trainer, TrainingConfig, causal_lm_loss

    logged: list[tuple[dict[str, float], int]] = []
    with tempfile.TemporaryDirectory() as output_dir:
        config = TrainingConfig(
            output_dir=output_dir,
            max_steps=cfg["max_steps"],
            batch_size=cfg["batch_size"],
            learning_rate=LEARNING_RATE,
            weight_decay=WEIGHT_DECAY,
            adam_betas=BETAS,
            scheduler="cosine",
            warmup_steps=cfg["lr_warmup"],
            max_grad_norm=MAX_GRAD_NORM,
            mixed_precision="no",
            cpu=True,
            eval_steps=None,
            save_steps=None,
            save_at_end=False,
            save_best_model=False,
            logging_steps=cfg["log_every"] if logging else cfg["max_steps"],
            progress_bar=logging,
            seed=cfg["seed"],
        )
        trainer = Trainer(
            model,
            causal_lm_loss,
            dataset,
            config=config,
            log_fn=(lambda metrics, step: logged.append((metrics, step))) if logging else None,
        )
        clock.attach(trainer.optimizer)
        result = trainer.train()
    # Each log is the mean over the steps since the previous one: weight it by their number.
    logs = result.history["train_loss"]
    steps = [
        step - previous
        for (step, _), previous in zip(logs, [0] + [s for s, _ in logs[:-1]], strict=True)
    ]
    return sum(n * loss for n, (_, loss) in zip(steps, logs, strict=True)) / sum(steps)


def run_hf_trainer(model, dataset, order, cfg: dict[str, Any], clock: StepClock) -> float:
    """transformers' Trainer with equivalent settings; returns its mean training loss."""
    from transformers import Trainer, TrainerCallback, TrainingArguments

    class AttachClock(TrainerCallback):
        def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
            clock.attach(optimizer)

    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(
            output_dir=output_dir,
            max_steps=cfg["max_steps"],
            per_device_train_batch_size=cfg["batch_size"],
            learning_rate=LEARNING_RATE,
            weight_decay=WEIGHT_DECAY,
            adam_beta1=BETAS[0],
            adam_beta2=BETAS[1],
            adam_epsilon=1e-8,
            optim="adamw_torch",  # the default adamw_torch_fused is another AdamW kernel
            lr_scheduler_type="cosine",
            warmup_steps=cfg["lr_warmup"],
            max_grad_norm=MAX_GRAD_NORM,
            use_cpu=True,
            report_to=[],
            save_strategy="no",
            eval_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
            train_sampling_strategy="sequential",  # `order` already is the engine's permutation
            dataloader_drop_last=True,
            dataloader_num_workers=0,
            dataloader_pin_memory=False,
            remove_unused_columns=False,
            seed=cfg["seed"],
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=Subset(dataset, order),
            callbacks=[AttachClock()],
        )
        output = trainer.train()
    return float(output.training_loss)


def bench_preset(preset: str, cfg: dict[str, Any], rounds: int) -> tuple[list[dict], float]:
    """All loops, ``rounds`` times, on ``preset``; returns table rows and the engine overhead."""
    examples = cfg["max_steps"] * cfg["batch_size"]  # exactly one epoch: no reshuffle inside
    dataset = random_token_dataset(examples, cfg["seq_len"], cfg["vocab_size"], cfg["seed"])
    # The engine's epoch-0 order (EpochSeededSampler: randperm seeded seed + epoch).
    order = torch.randperm(examples, generator=torch.Generator().manual_seed(cfg["seed"])).tolist()
    runners: dict[str, Callable[[torch.nn.Module, StepClock], float]] = {
        "bare": lambda m, c: run_bare(m, dataset, order, cfg, c),
        "engine": lambda m, c: run_engine(m, dataset, cfg, c, logging=False),
        "engine+log": lambda m, c: run_engine(m, dataset, cfg, c, logging=True),
        "hf_trainer": lambda m, c: run_hf_trainer(m, dataset, order, cfg, c),
    }
    per_round: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    pooled: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    wall: dict[str, list[float]] = {loop: [] for loop in LOOPS}
    losses: dict[str, float] = {}
    # One untimed bare run first: the process's first loop pays one-off costs (allocator
    # growth, lazy kernel set-up) that would otherwise land on whichever loop runs first.
    runners["bare"](build_model(preset, cfg["vocab_size"], cfg["seed"]), StepClock())
    for round_index in range(rounds):
        shift = round_index % len(LOOPS)
        for loop in LOOPS[shift:] + LOOPS[:shift]:
            model = build_model(preset, cfg["vocab_size"], cfg["seed"])
            clock = StepClock()
            started = time.perf_counter()
            losses[loop] = runners[loop](model, clock)
            wall[loop].append((time.perf_counter() - started) / cfg["max_steps"])
            if len(clock.stamps) != cfg["max_steps"]:
                raise RuntimeError(
                    f"{loop}: {len(clock.stamps)} optimizer steps timed, expected {cfg['max_steps']}"
                )
            steps = clock.step_seconds(cfg["warmup"])
            per_round[loop].append(statistics.median(steps))
            pooled[loop].extend(steps)
            print(
                f"[{preset}] round {round_index + 1}/{rounds} {loop:<11} {per_round[loop][-1] * 1e3:8.1f} ms/step"
            )
    tokens_per_step = cfg["batch_size"] * cfg["seq_len"]
    rows = []
    overheads = {}
    best_bare = min(pooled["bare"])
    for loop in LOOPS:
        pairs = list(zip(per_round[loop], per_round["bare"], strict=True))
        ratios = [t / b - 1 for t, b in pairs]
        differences = [t - b for t, b in pairs]
        overheads[loop] = statistics.median(ratios)
        stats = common.summarize(pooled[loop])
        median_step = statistics.median(per_round[loop])
        rows.append(
            {
                "preset": preset,
                "loop": loop,
                "ms_per_step": round(median_step * 1e3, 2),
                "iqr_ms": round(stats["iqr"] * 1e3, 2),
                "round_medians_ms": " / ".join(f"{x * 1e3:.1f}" for x in per_round[loop]),
                "overhead_vs_bare_pct": round(overheads[loop] * 100, 2),
                "overhead_ms": round(statistics.median(differences) * 1e3, 2),
                "best_ms": round(stats["min"] * 1e3, 2),
                "best_overhead_pct": round((stats["min"] / best_bare - 1) * 100, 2),
                "tokens_per_s": round(tokens_per_step / median_step, 1),
                "wall_ms_per_step": round(statistics.median(wall[loop]) * 1e3, 2),
                "mean_train_loss": round(losses[loop], 5),
            }
        )
    return rows, overheads["engine"]


def main() -> None:
    parser = common.make_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--presets", nargs="+", default=["tiny"], choices=["debug", "tiny", "small"]
    )
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per run")
    parser.add_argument("--small-steps", type=int, default=6, help="timed steps for `small`")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps at the start of a run")
    parser.add_argument("--rounds", type=int, default=5, help="runs of every loop (rotating order)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--vocab-size", type=int, default=8192, help="the BPE vocabulary size")
    parser.add_argument("--log-every", type=int, default=10, help="engine+log logging_steps")
    # One thread by default: on 2 cores shared with other jobs, a 2-thread step waits at every
    # parallel region for whichever thread was descheduled, and step times jumped 5-10x
    # between rounds; the per-step overhead measured here is Python work either way.
    parser.set_defaults(threads=1)
    args = parser.parse_args()
    if args.quick:
        args.steps, args.small_steps, args.warmup, args.rounds = 3, 2, 1, 1
        args.batch_size, args.seq_len, args.vocab_size = 2, 32, 1024
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()  # config notices would drown the progress lines
    threads = common.set_threads(args.threads)
    machine = common.machine_info(threads)
    rows, overheads = [], {}
    for preset in args.presets:
        steps = args.small_steps if preset == "small" else args.steps
        cfg = {
            "max_steps": args.warmup + steps,
            "warmup": args.warmup,
            "lr_warmup": 2,
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "vocab_size": args.vocab_size,
            "seed": args.seed,
            "log_every": args.log_every,
        }
        preset_rows, overheads[preset] = bench_preset(preset, cfg, args.rounds)
        rows.extend(preset_rows)
    targets = [
        common.target(
            f"engine step-time overhead vs bare loop ({preset})",
            f"<= {OVERHEAD_TARGET:.0%}",
            f"{overhead:+.1%}",
            overhead <= OVERHEAD_TARGET,
        )
        for preset, overhead in overheads.items()
    ]
    common.write_result(
        common.result_path(NAME, args),
        name=NAME,
        title="Training engine step time vs a bare PyTorch loop and transformers' Trainer (CPU fp32)",
        machine=machine,
        config={
            "presets": args.presets,
            "architecture": "gpt2",
            "batch_size": args.batch_size,
            "seq_len": args.seq_len,
            "vocab_size": args.vocab_size,
            "timed_steps": args.steps,
            "timed_steps_small": args.small_steps if "small" in args.presets else None,
            "warmup_steps_dropped": args.warmup,
            "rounds": args.rounds,
            "data": "seeded random token ids, one epoch, the engine's epoch-0 order for every loop",
            "optimizer": f"AdamW lr={LEARNING_RATE} wd={WEIGHT_DECAY} betas={BETAS}, cosine, 2 warmup steps, clip {MAX_GRAD_NORM}",
            "engine+log": f"progress bar on, logging_steps={args.log_every}, log_fn appends to a list",
            "quick": args.quick,
        },
        results=rows,
        targets=targets,
        notes=[
            "ms_per_step: median over rounds of each round's median interval between the ends of "
            "consecutive AdamW.step() calls (a torch optimizer step post-hook inside every loop, "
            "hf_trainer included: the hook is attached in a TrainerCallback.on_train_begin); "
            "iqr_ms: interquartile range of all timed steps pooled over rounds.",
            "overhead_vs_bare_pct: median over rounds of the paired ratio loop/bare - 1 (the "
            "primary number: a round's loops ran back to back, under similar load); best_ms: the "
            "fastest timed step of all rounds and best_overhead_pct its ratio to bare's fastest "
            "step (the least disturbed estimate on a busy machine, as timeit argues); "
            "overhead_ms: median over rounds of loop - bare in ms, the fixed per-step cost, "
            "which carries over to other thread counts (overhead % = overhead_ms / bare ms).",
            "Threads: 1 by default (--threads), see machine.torch_threads: with 2 threads on "
            "this shared 2-core machine step times were erratic (5-10x swings between rounds).",
            "hf_trainer's mean_train_loss is (T-1)/T of the others (T = seq_len): its loss "
            "divides the summed token losses by num_items_in_batch, counted on the labels "
            "before the causal shift (T per row instead of T-1); the gradients scale alike.",
            "wall_ms_per_step: wall time of the whole training call (set-up of the loop, "
            "warmup steps and teardown included) divided by the number of steps.",
            "mean_train_loss: the mean loss over all steps, "
            "a check that the loops did the same work; bare and engine should agree closely.",
        ],
        seconds=time.perf_counter() - started,
    )


if __name__ == "__main__":
    main()
