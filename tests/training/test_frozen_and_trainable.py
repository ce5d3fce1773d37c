"""Training a few parameters on a frozen model: eval-mode frozen parts, trainable-only
checkpoints with exact resume, and best-model reload for trainable-only and peft adapters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn
from training_tiny import SyntheticLM, tiny_gpt2

from router_pipelines.training import Trainer, causal_lm_loss


class Crash(Exception):
    pass


def _frozen_base(seed: int = 0, trainable_seed: int | None = None):
    """Tiny GPT-2 with dropout; only block 1 trains. ``trainable_seed`` re-initialises block 1
    (the frozen part always comes from ``seed``: the caller rebuilds it the same way)."""
    model = tiny_gpt2(seed, dropout=0.1)
    model.requires_grad_(False)
    model.transformer.h[1].requires_grad_(True)
    if trainable_seed is not None:
        other = tiny_gpt2(trainable_seed, dropout=0.1)
        model.transformer.h[1].load_state_dict(other.transformer.h[1].state_dict())
    return model


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_modules_stay_in_eval_mode_and_out_of_the_optimizer(make_config, train_data):
    model = _frozen_base()
    frozen_before = {k: v.clone() for k, v in model.transformer.h[0].state_dict().items()}
    train_modes, eval_modes = [], []

    def loss_fn(model_, batch, step):
        h = model_.transformer.h  # one process on the CPU: the prepared model is the model
        modes = (h[0].training, h[0].attn.attn_dropout.training, h[1].training)
        modes += (model_.transformer.drop.training, model_.training)
        (train_modes if torch.is_grad_enabled() else eval_modes).append(modes)
        return causal_lm_loss(model_, batch, step)

    config = make_config(max_steps=3, eval_steps=1, eval_batch_size=12)
    trainer = Trainer(model, loss_fn, train_data, SyntheticLM(4), config=config)
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.transformer.h[1].parameters()}
    trainer.train()
    # Frozen block 0 and its dropout: eval; block 1 and the parameter-less top dropout: train;
    # the same after each evaluation (steps 2 and 3 follow one).
    assert train_modes == [(False, False, True, True, True)] * 3
    assert eval_modes == [(False, False, False, False, False)] * 3
    torch.testing.assert_close(model.transformer.h[0].state_dict(), frozen_before, atol=0, rtol=0)

    train_modes.clear()
    config = make_config(max_steps=1, frozen_modules_eval=False)
    Trainer(_frozen_base(), loss_fn, train_data, config=config).train()
    assert train_modes == [(True, True, True, True, True)]


def test_trainable_only_checkpoints_resume_exactly(make_config, tmp_path):
    def config(**overrides):
        values = dict(
            output_dir=str(tmp_path / "out"),
            max_steps=6,
            batch_size=2,
            scheduler="cosine",
            save_steps=2,
            save_only_trainable=True,
            eval_steps=3,
            eval_batch_size=6,
            load_best_model_at_end=True,
        )
        return make_config(**{**values, **overrides})

    def crash_at_4(model, batch, step):
        if step == 4:
            raise Crash
        return causal_lm_loss(model, batch, step)

    data, eval_data = SyntheticLM(16, seed=1), SyntheticLM(6, seed=2)
    reference = Trainer(
        _frozen_base(),
        causal_lm_loss,
        data,
        eval_data,
        config=config(output_dir=str(tmp_path / "ref")),
    ).train()
    with pytest.raises(Crash):
        Trainer(_frozen_base(), crash_at_4, data, eval_data, config=config()).train()
    (run_dir,) = (tmp_path / "out").iterdir()
    saved = safetensors.torch.load_file(run_dir / "checkpoint-4" / "model.safetensors")
    assert set(saved) == _trainable(_frozen_base())  # exactly block 1, nothing frozen
    best = safetensors.torch.load_file(run_dir / "best" / "model.safetensors")
    assert set(best) == _trainable(_frozen_base())
    assert json.loads((run_dir / "best" / "best_model_info.json").read_text())["trainable_only"]

    # The caller rebuilds the frozen part; the trainable part comes from the checkpoint.
    resumed = Trainer(
        _frozen_base(trainable_seed=5),
        causal_lm_loss,
        data,
        eval_data,
        config=config(resume_from_checkpoint="latest"),
    ).train()
    assert resumed.global_step == 6 and resumed.best_step == reference.best_step
    # load_best_model_at_end put the best step's block 1 back onto the frozen base, and it is
    # the uninterrupted run's.
    best = safetensors.torch.load_file(Path(resumed.best_model_dir) / "model.safetensors")
    reference_best = Path(reference.best_model_dir) / "model.safetensors"
    torch.testing.assert_close(best, safetensors.torch.load_file(reference_best), atol=0, rtol=0)
    expected = _frozen_base()
    expected.transformer.h[1].load_state_dict(
        {k.removeprefix("transformer.h.1."): v for k, v in best.items()}
    )
    torch.testing.assert_close(resumed.model.state_dict(), expected.state_dict(), atol=0, rtol=0)
    assert reference.history["eval_loss"] == resumed.history["eval_loss"]


def test_a_trainable_only_checkpoint_refuses_another_trainable_set(make_config, tmp_path):
    config = make_config(
        output_dir=str(tmp_path / "out"), max_steps=2, save_at_end=True, save_only_trainable=True
    )
    first = Trainer(_frozen_base(), causal_lm_loss, SyntheticLM(16), config=config).train()
    more_trainable = _frozen_base()
    more_trainable.transformer.ln_f.requires_grad_(True)
    resume = make_config(
        output_dir=str(tmp_path / "out"), max_steps=2, resume_from_checkpoint=first.last_checkpoint
    )
    with pytest.raises(ValueError, match=r"lacks trainable parameters \['transformer\.ln_f\.bias'"):
        Trainer(more_trainable, causal_lm_loss, SyntheticLM(16), config=resume).train()
    fewer_trainable = _frozen_base()
    fewer_trainable.transformer.h[1].mlp.requires_grad_(False)
    with pytest.raises(ValueError, match=r"holds weights that are not trainable .*h\.1\.mlp"):
        Trainer(fewer_trainable, causal_lm_loss, SyntheticLM(16), config=resume).train()


def _lora_gpt2(seed: int = 0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = tiny_gpt2(seed, dropout=0.1)
    config = LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], lora_dropout=0.1)
    config.fan_in_fan_out = True  # GPT-2's Conv1D stores weights transposed
    return get_peft_model(base, config)


def test_best_model_of_a_peft_adapter_is_reloaded_with_peft(make_config, tmp_path, eval_data):
    model = _lora_gpt2()
    base_before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    eval_losses = iter([3.0, 1.0, 2.0])  # best at step 4
    snapshots = {}

    def eval_loss(model_, batch, step):
        return torch.tensor(next(eval_losses)), {}

    def log_fn(metrics, step):
        if step in (4, 6) and "train_loss" in metrics:
            snapshots[step] = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}

    config = make_config(
        output_dir=str(tmp_path / "out"),
        max_steps=6,
        eval_steps=2,
        eval_batch_size=12,
        save_steps=6,
        save_only_trainable=True,
        load_best_model_at_end=True,
    )
    result = Trainer(
        model,
        causal_lm_loss,
        SyntheticLM(32, seed=1),
        eval_data,
        config=config,
        eval_loss_fn=eval_loss,
        log_fn=log_fn,
    ).train()
    best_dir = Path(result.best_model_dir)
    assert {"adapter_model.safetensors", "adapter_config.json"} <= {
        p.name for p in best_dir.iterdir()
    }
    assert not (best_dir / "model.safetensors").exists()  # the adapter only
    checkpoint = safetensors.torch.load_file(Path(result.last_checkpoint) / "model.safetensors")
    assert set(checkpoint) == _trainable(model) and all("lora_" in k for k in checkpoint)
    after = result.model.state_dict()
    assert result.best_step == 4
    torch.testing.assert_close({k: after[k] for k in snapshots[4]}, snapshots[4], atol=0, rtol=0)
    assert any(not torch.equal(snapshots[6][k], v) for k, v in snapshots[4].items())
    torch.testing.assert_close({k: after[k] for k in base_before}, base_before, atol=0, rtol=0)


class _FrozenEmbeddingLM(nn.Module):
    """A plain module (no save_pretrained): a frozen embedding under a trained head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(128, 8), nn.Linear(8, 128)
        self.embed.requires_grad_(False)

    def forward(self, input_ids, labels, attention_mask):
        logits = self.head(self.embed(input_ids))[:, :-1]  # (B, T-1, V)
        return nn.functional.cross_entropy(logits.reshape(-1, 128), labels[:, 1:].reshape(-1))


def test_trainable_only_best_of_a_plain_module(make_config, train_data, eval_data):
    torch.manual_seed(0)
    model = _FrozenEmbeddingLM()
    embed_before = model.embed.weight.detach().clone()
    eval_losses = iter([2.0, 1.0, 3.0])  # best at step 2
    snapshot = {}

    def eval_loss(model_, batch, step):
        return torch.tensor(next(eval_losses)), {}

    def log_fn(metrics, step):
        if step == 2 and "train_loss" in metrics:
            snapshot.update({k: v.clone() for k, v in model.head.state_dict().items()})

    config = make_config(
        max_steps=3,
        eval_steps=1,
        eval_batch_size=12,
        save_only_trainable=True,
        load_best_model_at_end=True,
    )
    result = Trainer(
        model,
        lambda m, b, s: (m(**b), {}),
        train_data,
        eval_data,
        config=config,
        eval_loss_fn=eval_loss,
        log_fn=log_fn,
    ).train()
    best = safetensors.torch.load_file(Path(result.best_model_dir) / "model.safetensors")
    assert set(best) == {"head.weight", "head.bias"}
    torch.testing.assert_close(result.model.head.state_dict(), snapshot, atol=0, rtol=0)
    assert torch.equal(result.model.embed.weight, embed_before)
