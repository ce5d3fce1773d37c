import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.evaluation.speed import measure_throughput


@pytest.fixture(scope="module")
def model() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    return GPT2LMHeadModel(config).eval()


@pytest.mark.parametrize("mode", ["prefill", "decode"])
def test_result_keys_and_values(model, mode):
    result = measure_throughput(model, 64, batch_size=2, seq_len=8, mode=mode, warmup=1, iters=2)
    assert set(result) == {"tokens_per_s", "seconds", "mode", "batch_size", "seq_len"}
    assert result["mode"] == mode
    assert (result["batch_size"], result["seq_len"]) == (2, 8)
    assert result["seconds"] > 0
    assert result["tokens_per_s"] == pytest.approx(16 / result["seconds"])


class CallRecorder(torch.nn.Module):
    """Wraps a HF model and records what each forward receives."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.config = inner.config
        self.calls = []

    def forward(self, **kwargs):
        self.calls.append(
            (tuple(kwargs["input_ids"].shape), kwargs.get("past_key_values") is not None)
        )
        return self.inner(**kwargs)


def test_decode_feeds_one_token_at_a_time_with_the_cache(model):
    recorder = CallRecorder(model)
    measure_throughput(recorder, 64, batch_size=3, seq_len=4, mode="decode", warmup=0, iters=1)
    assert recorder.calls == [((3, 1), False)] + [((3, 1), True)] * 3


def test_prefill_is_one_forward(model):
    recorder = CallRecorder(model)
    measure_throughput(recorder, 64, batch_size=3, seq_len=4, mode="prefill", warmup=1, iters=2)
    assert recorder.calls == [((3, 4), False)] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "generate"}, "mode"),
        ({"seq_len": 33}, "seq_len"),
        ({"batch_size": 0}, "batch_size"),
        ({"iters": 0}, "iters"),
    ],
)
def test_bad_arguments_raise(model, kwargs, message):
    arguments = {"batch_size": 1, "seq_len": 4, "mode": "prefill", **kwargs}
    with pytest.raises(ValueError, match=message):
        measure_throughput(model, 64, **arguments)
