"""Trains the tiny memory model under ``accelerate launch`` (2 CPU processes, gloo); run by
test_memory_training.py. ``ddp_find_unused_parameters`` stays false: the bank is one tensor, so
unpicked chapters get zero gradients rather than none. Writes OUTPUT_DIR/rank<i>.json."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from memory_tiny import MaskedChats, tiny_memory_model, tiny_training  # noqa: E402

from router_pipelines.models.memory import LoraSettings  # noqa: E402
from router_pipelines.pipelines.memory.checkpoint_files import seed_config  # noqa: E402
from router_pipelines.pipelines.memory.training import train_memory_model  # noqa: E402


def main(output_dir: str) -> None:
    picked: list[int] = []
    model = tiny_memory_model(top_k=1)
    inner_forward = model.forward

    def forward(*args, **kwargs):
        out = inner_forward(*args, **kwargs)
        if model.training:
            picked.append(max(len(set(r["indices"].reshape(-1).tolist())) for r in out.routing))
        return out

    model.forward = forward
    counts = []
    config = tiny_training(output_dir, batch_size=2, eval_steps=4, max_steps=4, save_steps=2)
    result, _ = train_memory_model(
        model,
        config,
        MaskedChats(16, seed=1),
        {"chat": MaskedChats(8, seed=2)},
        lora=False,
        on_counts=lambda c, step: counts.append(c.tolist()),
        seed_config=seed_config(model.memory_config, LoraSettings(), config),
    )
    from accelerate import PartialState

    state = PartialState()
    digest = hashlib.sha256()
    for name, tensor in sorted(result.model.memory.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().numpy().tobytes())
    report = {
        "num_processes": state.num_processes,
        "weights_digest": digest.hexdigest(),
        "max_chapters_picked_per_step": max(picked),
        "eval_counts": counts[-1],
    }
    Path(output_dir, f"rank{state.process_index}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
