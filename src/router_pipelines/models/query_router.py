"""The query router (seed 004): a causal LM that answers ``[[1]]``..``[[5]]``.

The router is any transformers causal LM whose vocabulary gains the five label tokens
(:func:`add_label_tokens`: single special tokens, new embedding rows set to the mean of the
existing rows). It is never sampled: :func:`score_distribution` reads the softmax over the five
label logits at the answer position, and :func:`p_strong` turns it into the probability that
the cheap model's answer will not be good enough, ``P(strong) = 1 - P(score >= 4)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from router_pipelines.models.query_router_labels import GOOD_ENOUGH, LABEL_TOKENS  # noqa: F401


def add_label_tokens(model: nn.Module, tokenizer: Any) -> list[int]:
    """Add :data:`LABEL_TOKENS` to ``tokenizer`` as special tokens and resize ``model`` to it.

    New embedding rows (and LM-head rows when the head is not tied) are the mean of the
    existing rows: a label token then starts as an "average" token instead of a random
    vector whose logit could dominate the softmax from the first step. Tokens already in the
    vocabulary keep their ids, so the call is idempotent.

    Returns:
        The five label token ids, in score order.

    Raises:
        ValueError: a label does not encode to exactly one token after adding.
    """
    before = set(tokenizer.get_vocab().values())
    tokenizer.add_special_tokens(
        {"extra_special_tokens": list(LABEL_TOKENS)}, replace_extra_special_tokens=False
    )
    added = [i for i in label_token_ids(tokenizer) if i not in before]
    old_rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old_rows:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    if added:
        # The mean of the model's rows before resizing; a model with spare rows (a vocabulary
        # padded beyond its tokenizer) gets the label rows set the same way.
        embeddings = model.get_input_embeddings().weight
        head = model.get_output_embeddings()
        with torch.no_grad():
            _mean_init(embeddings, added, old_rows)
            if head is not None and head.weight is not embeddings:
                _mean_init(head.weight, added, old_rows)
                if getattr(head, "bias", None) is not None:
                    head.bias[added] = head.bias[:old_rows].mean()
    return label_token_ids(tokenizer)


def _mean_init(weight: torch.Tensor, rows: list[int], old_rows: int) -> None:
    existing = [i for i in range(old_rows) if i not in set(rows)]
    weight[rows] = weight[existing].mean(dim=0, keepdim=True)


def label_token_ids(tokenizer: Any) -> list[int]:
    """The ids of :data:`LABEL_TOKENS` in ``tokenizer``, checking each is one token."""
    ids = []
    for label in LABEL_TOKENS:
        encoded = tokenizer.encode(label, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"label token {label!r}: encodes to {len(encoded)} tokens {encoded}, not one; "
                "add it with add_label_tokens(model, tokenizer)"
            )
        ids.append(int(encoded[0]))
    return ids


def hidden_at(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    positions: torch.Tensor,
) -> torch.Tensor:
    """The final hidden state (B, C) at ``positions`` (B,) of each row: the decoder's output
    (after its final norm), i.e. what the LM head reads. The LM head is not applied, so no
    (B, T, V) logits are ever built."""
    decoder = model.base_model
    if decoder is model:  # no separate decoder module: fall back to the hidden-states output
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        hidden = out.hidden_states[-1]
    else:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions]  # (B, C)


def label_logits(model: nn.Module, hidden: torch.Tensor, label_ids: list[int]) -> torch.Tensor:
    """The LM head applied to ``hidden`` (B, C) for the five label rows only: (B, 5), equal to
    ``full_logits[:, label_ids]`` (tested) at a fraction of the cost (5 rows, not V)."""
    head = model.get_output_embeddings()
    index = torch.as_tensor(label_ids, device=hidden.device)
    bias = head.bias[index] if getattr(head, "bias", None) is not None else None
    logits = torch.nn.functional.linear(hidden, head.weight[index], bias).float()
    cap = getattr(model.config, "final_logit_softcapping", None)  # Gemma-2 style heads
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def answer_label_logits(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, label_ids: list[int]
) -> torch.Tensor:
    """Label logits (B, 5) at each row's last real token (``input_ids`` / ``attention_mask``
    (B, T) are right-padded prompts ending where the label token would come)."""
    last = attention_mask.sum(dim=1) - 1  # (B,)
    return label_logits(model, hidden_at(model, input_ids, attention_mask, last), label_ids)


def score_distribution(label_logits: torch.Tensor) -> torch.Tensor:
    """P(score = s) for s = 1..5: the softmax over the five label tokens' logits only,
    (B, 5) -> (B, 5) (:func:`answer_label_logits` gives them)."""
    return torch.softmax(label_logits.float(), dim=-1)


def p_strong(distribution: torch.Tensor) -> torch.Tensor:
    """``1 - P(score >= 4)``: the probability the query needs the strong model. (B, 5) -> (B,)."""
    return 1.0 - distribution[:, GOOD_ENOUGH - 1 :].sum(dim=-1)


def expected_score(distribution: torch.Tensor) -> torch.Tensor:
    """E[score] under the distribution. (B, 5) -> (B,)."""
    scores = torch.arange(1, len(LABEL_TOKENS) + 1, dtype=distribution.dtype)
    return distribution @ scores.to(distribution.device)


@torch.no_grad()
def predict_scores(
    model: nn.Module,
    tokenizer: Any,
    prompts: list[str],
    *,
    batch_size: int = 16,
    max_length: int | None = None,
) -> torch.Tensor:
    """Score distributions (N, 5) of ``prompts`` (texts ending where the label comes)."""
    label_ids = label_token_ids(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rows = []
    for start in range(0, len(prompts), batch_size):
        encoded = [
            tokenizer.encode(text, add_special_tokens=False)
            for text in prompts[start : start + batch_size]
        ]
        if max_length is not None:
            too_long = [len(ids) for ids in encoded if len(ids) > max_length]
            if too_long:
                raise ValueError(
                    f"prompt: {too_long[0]} tokens exceed the router's {max_length} positions"
                )
        input_ids, mask = pad_right(encoded, pad_id=_pad_id(tokenizer))
        logits = answer_label_logits(model, input_ids.to(device), mask.to(device), label_ids)
        rows.append(score_distribution(logits).cpu())
    model.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, len(LABEL_TOKENS))


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists into ``input_ids`` and ``attention_mask`` (B, T_max)."""
    width = max((len(ids) for ids in sequences), default=0)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def _pad_id(tokenizer: Any) -> int:
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return 0


def load_query_router(directory: Path, trust_remote_code: bool = False) -> nn.Module:
    """The ``query_router`` family loader (``models/bundle.py``): the fine-tuned causal LM."""
    from router_pipelines.models.bundle import load_causal_lm

    return load_causal_lm(directory, trust_remote_code)
