"""Loss, perplexity, bits per byte and next-token accuracy of a causal LM on a tokenized set."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from router_pipelines.config import check_int, check_optional_int
from router_pipelines.constants import IGNORE_INDEX


def evaluate_language_model(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 8,
    max_batches: int | None = None,
    device: torch.device | str | None = None,
    token_bytes: Any = None,
) -> dict[str, float | int]:
    """Token-weighted loss, perplexity, bits per byte and argmax accuracy of ``model``.

    Labels are shifted the HF way: the logits at position ``t`` predict ``labels[t + 1]``;
    positions whose label is -100 are skipped. The loss is the mean NLL over all counted tokens
    of all batches (not a mean of per-batch means), so padding and ragged batches do not bias it.

    Bits per byte is ``sum NLL (nats) / ln 2 / sum bytes``, both sums over the predicted
    target tokens, where ``token_bytes[id]`` is the UTF-8 length of token ``id``. It does not
    depend on the tokenizer, so models with different vocabularies compare on it.

    Args:
        model: a causal LM whose ``forward(input_ids=, attention_mask=)`` returns ``.logits``
            ``(B, T, V)`` (a HF model or a ``SwitchableLM`` at its current precision).
        dataset: items ``{"input_ids", "labels", "attention_mask"}``, LongTensors ``(T,)``.
        batch_size: sequences per forward.
        max_batches: stop after this many batches (``None``: the whole dataset).
        device: where to run; ``None`` uses the device of the model's parameters. The model is
            moved there.
        token_bytes: 1-D non-negative integer array ``(vocab,)`` of UTF-8 byte lengths per
            token id (``data.tokenizer.token_byte_lengths``); ``None``: ``bits_per_byte`` is NaN.

    Returns:
        ``loss`` (mean NLL in nats), ``perplexity`` (``exp(loss)``), ``bits_per_byte``,
        ``token_accuracy`` and ``tokens`` (the number of counted positions).

    Raises:
        ValueError: bad arguments, an empty or fully masked dataset, or a target id outside
            ``token_bytes``.
    """
    check_int("batch_size", batch_size, minimum=1)
    check_optional_int("max_batches", max_batches, minimum=1)
    byte_table = check_token_bytes(token_bytes)
    if len(dataset) == 0:
        raise ValueError("dataset: is empty")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    if byte_table is not None:
        byte_table = byte_table.to(device)

    was_training = model.training
    model.eval()
    # Sums stay on the device and are read once at the end: a .item() per batch would wait
    # for every forward to finish before the next one is queued.
    nll_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    tokens = torch.zeros((), dtype=torch.int64, device=device)
    target_bytes = torch.zeros((), dtype=torch.int64, device=device)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    try:
        with torch.inference_mode():
            for batch_index, batch in enumerate(loader):
                if max_batches is not None and batch_index >= max_batches:
                    break
                if byte_table is not None:  # on the host copy: no device sync
                    _check_ids_in_table(batch["labels"][:, 1:], len(byte_table))
                input_ids = batch["input_ids"].to(device)  # (B, T)
                labels = batch["labels"].to(device)  # (B, T)
                attention_mask = batch["attention_mask"].to(device)  # (B, T)
                targets = labels[:, 1:]  # (B, T-1)
                counted = targets != IGNORE_INDEX  # (B, T-1)
                if byte_table is not None:  # gather then mask: boolean indexing would sync
                    target_bytes += (byte_table[targets.clamp_min(0)] * counted).sum()
                logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
                logits = logits[:, :-1, :].float()  # (B, T-1, V): position t predicts t+1
                nll_sum += F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)),
                    targets.reshape(-1),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                ).double()
                correct += ((logits.argmax(dim=-1) == targets) & counted).sum()
                tokens += counted.sum()
    finally:
        model.train(was_training)

    n_tokens = int(tokens)
    if n_tokens == 0:
        raise ValueError(
            "dataset: no label is different from -100 after shifting; nothing to score"
        )
    nll = float(nll_sum)
    n_bytes = int(target_bytes)
    loss = nll / n_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else math.inf,  # exp overflows past ~709
        "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes > 0 else math.nan,
        "token_accuracy": int(correct) / n_tokens,
        "tokens": n_tokens,
    }


def check_token_bytes(token_bytes: Any) -> torch.Tensor | None:
    """``token_bytes`` as an int64 tensor ``(vocab,)``, or ``None`` when not given.

    Raises:
        ValueError: not a non-empty 1-D array of non-negative integers, naming ``token_bytes``.
    """
    if token_bytes is None:
        return None
    array = np.asarray(token_bytes.cpu() if torch.is_tensor(token_bytes) else token_bytes)
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            "token_bytes: expected a non-empty 1-D integer array of UTF-8 byte lengths indexed "
            f"by token id, got dtype {array.dtype} and shape {array.shape}"
        )
    if (array < 0).any():
        raise ValueError(f"token_bytes: byte lengths must be >= 0, got minimum {array.min()}")
    return torch.as_tensor(array, dtype=torch.int64)


def _check_ids_in_table(targets: torch.Tensor, table_size: int) -> None:
    """Raise if a counted target id ``(B, T-1)`` has no entry in the byte table."""
    ids = targets[targets != IGNORE_INDEX]
    if ids.numel() and (int(ids.max()) >= table_size or int(ids.min()) < 0):
        raise ValueError(
            f"token_bytes: has {table_size} entries but the dataset holds token ids from "
            f"{int(ids.min())} to {int(ids.max())}; build it from the tokenizer that "
            "tokenized the dataset"
        )
