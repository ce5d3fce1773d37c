"""torch.compile in the engine: in place, keys unchanged, launcher setting honoured, bad values."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors.torch import load_file
from training_tiny import SyntheticLM, tiny_gpt2

from router_pipelines.training import Trainer, causal_lm_loss
from router_pipelines.training.runtime import compile_settings


def _train(config, seed=0):
    model = tiny_gpt2(seed, dropout=0.1)
    trainer = Trainer(model, causal_lm_loss, SyntheticLM(16, seed=1), config=config)
    return trainer, trainer.train()


def test_the_eager_backend_compiles_forward_and_leaves_the_weights_bit_identical(
    make_config, tmp_path
):
    """Why torch_compile is result-neutral: the same numbers through dynamo (dropout on)."""
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # reset() keeps the counters
    _, plain = _train(make_config(output_dir=str(tmp_path / "a"), batch_size=2))
    compiled_trainer, compiled = _train(
        make_config(output_dir=str(tmp_path / "b"), batch_size=2, torch_compile_backend="eager")
    )
    assert compiled_trainer.compile_settings.backend == "eager"
    # the forward really went through dynamo: frames were captured into graphs
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert getattr(compiled.model, "_compiled_call_impl", None) is not None
    torch.testing.assert_close(
        compiled.model.state_dict(), plain.model.state_dict(), atol=0, rtol=0
    )
    torch._dynamo.reset()


def test_a_compiled_run_saves_the_keys_of_the_uncompiled_model(make_config, tmp_path):
    """best/ and checkpoints load into a plain model: no "_orig_mod." prefix anywhere."""
    config = make_config(
        output_dir=str(tmp_path / "run"),
        batch_size=2,
        max_steps=2,
        torch_compile_backend="eager",
        save_at_end=True,
    )
    _, result = _train(config)
    plain_keys = set(tiny_gpt2(0).state_dict())
    saved = list(Path(result.run_dir).glob("checkpoint-*/model.safetensors"))
    assert saved, "the run wrote no checkpoint"
    for path in saved:
        keys = set(load_file(str(path)))
        assert not any("_orig_mod" in key for key in keys)
        assert keys <= plain_keys
    assert set(result.model.state_dict()) == plain_keys


def test_a_backend_or_mode_turns_compile_on_and_bad_values_are_named(make_config):
    assert make_config(torch_compile_mode="max-autotune").torch_compile is True
    assert make_config(torch_compile_backend="aot_eager").torch_compile is True
    assert make_config().torch_compile is False
    settings = compile_settings(make_config(torch_compile=True))
    assert (settings.backend, settings.mode, settings.source) == (
        "inductor",
        None,
        "torch_compile",
    )
    with pytest.raises(ValueError, match="torch_compile_backend.*'inductr'.*inductor"):
        make_config(torch_compile_backend="inductr")
    with pytest.raises(ValueError, match="torch_compile_mode.*'fast'.*reduce-overhead"):
        make_config(torch_compile_mode="fast")
    with pytest.raises(ValueError, match="torch_compile"):
        make_config(torch_compile="yes")


def test_the_launcher_dynamo_backend_is_honoured_when_the_config_is_silent(
    make_config, monkeypatch
):
    """`accelerate launch --dynamo_backend X` sets ACCELERATE_DYNAMO_BACKEND."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "EAGER")
    monkeypatch.setenv("ACCELERATE_DYNAMO_MODE", "reduce-overhead")
    settings = compile_settings(make_config())
    assert (settings.backend, settings.mode, settings.source) == (
        "eager",
        "reduce-overhead",
        "ACCELERATE_DYNAMO_BACKEND",
    )
    # the config wins over the launcher
    assert compile_settings(make_config(torch_compile_backend="aot_eager")).backend == "aot_eager"
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "no")
    assert compile_settings(make_config()) is None
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "warp")
    with pytest.raises(ValueError, match="ACCELERATE_DYNAMO_BACKEND.*'warp'"):
        compile_settings(make_config())


def test_the_launcher_fullgraph_and_dynamic_flags_reach_the_compile(make_config, monkeypatch):
    """--dynamo_use_fullgraph / --dynamo_use_dynamic are not dropped; regional compilation,
    which the in-place compile cannot give, is refused by name."""
    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "eager")
    settings = compile_settings(make_config())
    assert (settings.fullgraph, settings.dynamic) == (False, None)
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_FULLGRAPH", "true")
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_DYNAMIC", "False")
    settings = compile_settings(make_config())
    assert (settings.fullgraph, settings.dynamic) == (True, False)
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_FULLGRAPH", "maybe")
    with pytest.raises(ValueError, match="ACCELERATE_DYNAMO_USE_FULLGRAPH='maybe'"):
        compile_settings(make_config())
    monkeypatch.delenv("ACCELERATE_DYNAMO_USE_FULLGRAPH")
    monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", "1")
    with pytest.raises(ValueError, match="REGIONAL_COMPILATION.*whole forward"):
        compile_settings(make_config())
