"""Queries and their measured outcomes on every rung of a model ladder, and the labels.

A *query* is a window of a validation block: ``prompt_tokens`` tokens of prompt and the next
``reference_tokens`` tokens as its held-out reference continuation. A *rung* is one model of
the ladder (by default one weight width of the switchable model, cheapest first). For every
query and every rung the rung's **quality** is its mean log-probability of the reference tokens
given the prompt (``-`` per-token loss; higher is better); its **cost** is measured: the
seconds of its share of a batched forward pass on this machine, and the weight bytes read to produce
the reference (``weight_bytes x reference_tokens``: one pass over the weights per generated
token with a KV cache). Because all rungs are our models, every query has every outcome
(counterfactual labels) and the oracle router is exact.

**Label** of a query for rung ``r`` (below the strongest): the gap ``g = q_strong - q_r`` is
placed among the quantiles of the gaps of the *training* split (all lower rungs pooled), at
``label_quantiles`` (default 0.2, 0.4, 0.6, 0.8): ``g`` at or below the first quantile is 5
(the rung is as good as the strongest), above the last is 1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from router_pipelines.config import check_fraction, check_int

SPLITS = ("train", "calibration", "test")
# The rung that is a model of its own (query_router.ladder_lm), not a width of a switchable model.
LADDER_LM = "ladder_lm"


@dataclass
class QueryConfig:
    """``query_router.queries``: how queries are cut from the validation blocks."""

    prompt_tokens: int = 32  # tokens of prompt per query
    reference_tokens: int = 16  # tokens of held-out reference continuation
    window_stride: int | None = None  # windows per block every n tokens (null: one per block)
    max_queries: int | None = None  # at most this many (first blocks first; null: all)
    calibration_fraction: float = 0.2  # of the blocks: calibration split
    test_fraction: float = 0.2  # of the blocks: held-out test split
    seed: int = 42

    def __post_init__(self) -> None:
        check_int("prompt_tokens", self.prompt_tokens, minimum=1)
        check_int("reference_tokens", self.reference_tokens, minimum=1)
        if self.window_stride is not None:
            check_int("window_stride", self.window_stride, minimum=1)
        if self.max_queries is not None:
            check_int("max_queries", self.max_queries, minimum=3)
        check_fraction("calibration_fraction", self.calibration_fraction, include_zero=False)
        check_fraction("test_fraction", self.test_fraction, include_zero=False)
        if self.calibration_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"calibration_fraction + test_fraction: {self.calibration_fraction} + "
                f"{self.test_fraction} leaves no training split; keep the sum below 1"
            )


@dataclass
class Rung:
    """One model of the ladder: ``prepare()`` puts ``model`` in this rung's state (e.g. a
    precision) before it is scored or used."""

    name: str
    model: Any
    tokenizer: Any
    prepare: Callable[[], None] = field(default=lambda: None)
    weight_bytes: int = 0


def cut_queries(input_ids: np.ndarray, attention_mask: np.ndarray, config: QueryConfig):
    """Queries from token blocks (N, T): one row per window with its block and split.

    Returns:
        A DataFrame with ``query_id``, ``block``, ``split`` (train / calibration / test, drawn
        per block so overlapping windows never straddle splits), ``prompt_ids`` and
        ``reference_ids``.

    Raises:
        ValueError: the blocks are shorter than prompt + reference, or too few for 3 splits.
    """
    import pandas as pd

    length = config.prompt_tokens + config.reference_tokens
    n_blocks, seq_len = input_ids.shape
    if seq_len < length:
        raise ValueError(
            f"prompt_tokens + reference_tokens: {config.prompt_tokens} + "
            f"{config.reference_tokens} = {length} exceeds the {seq_len} tokens of a block "
            "(data.seq_len)"
        )
    stride = config.window_stride or seq_len
    block_split = _block_splits(n_blocks, config)
    rows = []
    for block in range(n_blocks):
        for start in range(0, seq_len - length + 1, stride):
            if attention_mask[block, start : start + length].min() == 0:
                continue
            window = input_ids[block, start : start + length].astype(np.int64)
            rows.append(
                {
                    "block": block,
                    "split": block_split[block],
                    "prompt_ids": window[: config.prompt_tokens].tolist(),
                    "reference_ids": window[config.prompt_tokens :].tolist(),
                }
            )
            if config.max_queries is not None and len(rows) >= config.max_queries:
                break
        if config.max_queries is not None and len(rows) >= config.max_queries:
            break
    frame = pd.DataFrame(rows, columns=["block", "split", "prompt_ids", "reference_ids"])
    frame.insert(0, "query_id", np.arange(len(frame)))
    missing = [s for s in SPLITS if not (frame["split"] == s).any()]
    if missing:
        raise ValueError(
            f"queries: {len(frame)} queries from {n_blocks} blocks leave the split(s) {missing} "
            "empty; use more validation data (data.validation_fraction) or a window_stride"
        )
    return frame


def _block_splits(n_blocks: int, config: QueryConfig) -> np.ndarray:
    order = np.random.default_rng(config.seed).permutation(n_blocks)
    n_test = max(1, round(config.test_fraction * n_blocks))
    n_calibration = max(1, round(config.calibration_fraction * n_blocks))
    splits = np.empty(n_blocks, dtype=object)
    splits[order[:n_test]] = "test"
    splits[order[n_test : n_test + n_calibration]] = "calibration"
    splits[order[n_test + n_calibration :]] = "train"
    return splits


def add_question_text(queries: Any, tokenizer: Any):
    """``queries`` with ``question`` (the decoded prompt) and ``reference`` (decoded text)."""
    frame = queries.copy()
    frame["question"] = [
        tokenizer.decode(ids, skip_special_tokens=True) for ids in frame["prompt_ids"]
    ]
    frame["reference"] = [
        tokenizer.decode(ids, skip_special_tokens=True) for ids in frame["reference_ids"]
    ]
    return frame


def check_scorable(rungs: Sequence[Rung]) -> None:
    """Every rung must read the same token ids as the same text (the queries are token ids of
    one tokenizer): compare vocabularies.

    Raises:
        ValueError: two rungs are the same model in the same state, or their tokenizers
            differ, naming both.
    """
    from router_pipelines.model_source import tokenizer_digest

    names = [rung.name for rung in rungs]
    if len(set(names)) != len(names):
        raise ValueError(f"ladder: the cheap and strong models must differ, got rungs {names}")
    if len(rungs) < 2:
        raise ValueError(f"ladder: needs a cheap and a strong model, got {names}")
    reference = tokenizer_digest(rungs[0].tokenizer)
    for rung in rungs[1:]:
        if tokenizer_digest(rung.tokenizer) != reference:
            raise ValueError(
                f"ladder: {rung.name!r} and {rungs[0].name!r} have different tokenizers, so "
                "they cannot be scored on the same reference tokens; use models that share "
                "one tokenizer"
            )


def score_rungs(queries: Any, rungs: Sequence[Rung], *, warmup: int = 1, batch_size: int = 32):
    """Measured quality and cost of every rung on every query, in padded batches.

    Each batch of ``batch_size`` queries (prompt + reference, right-padded) is one forward pass
    per rung; per-position losses are masked to the real tokens, so a query's numbers equal
    those of its own batch-1 pass (tested). ``seconds_<rung>`` is the batch's wall time shared
    among its queries by their token counts (after ``warmup`` untimed batches): the measured
    throughput cost of a query on this machine.

    Returns:
        ``queries`` with ``quality_<rung>`` (mean log-prob per reference token),
        ``token_accuracy_<rung>``, ``seconds_<rung>``, ``bytes_<rung>``, ``prompt_loss_<rung>``
        (mean loss on the prompt itself, from the same forward pass) per rung and
        ``prompt_loss`` (the cheapest rung's: the uncertainty baseline).
    """
    import torch

    check_scorable(rungs)
    frame = queries.copy()
    prompts = [list(p) for p in frame["prompt_ids"]]
    references = [list(r) for r in frame["reference_ids"]]
    batches = [
        range(start, min(start + batch_size, len(prompts)))
        for start in range(0, len(prompts), batch_size)
    ]
    for index, rung in enumerate(rungs):
        rung.prepare()
        model = rung.model.eval()
        for rows in batches[:warmup]:
            _batch_losses(model, [prompts[i] for i in rows], [references[i] for i in rows])
        columns: dict[str, list[float]] = {"quality": [], "accuracy": [], "seconds": []}
        prompt_loss: list[float] = []
        with torch.no_grad():
            for rows in batches:
                batch_prompts = [prompts[i] for i in rows]
                batch_references = [references[i] for i in rows]
                start = time.perf_counter()
                scored = _batch_losses(model, batch_prompts, batch_references)
                elapsed = time.perf_counter() - start
                lengths = np.array(
                    [len(batch_prompts[k]) + len(batch_references[k]) for k in range(len(rows))]
                )
                columns["seconds"].extend((elapsed * lengths / lengths.sum()).tolist())
                columns["quality"].extend(scored["quality"])
                columns["accuracy"].extend(scored["accuracy"])
                prompt_loss.extend(scored["prompt_loss"])
        reference_tokens = np.array([len(r) for r in references], dtype=float)
        frame[f"quality_{rung.name}"] = columns["quality"]
        frame[f"token_accuracy_{rung.name}"] = columns["accuracy"]
        frame[f"seconds_{rung.name}"] = columns["seconds"]
        frame[f"bytes_{rung.name}"] = float(rung.weight_bytes) * reference_tokens
        frame[f"prompt_loss_{rung.name}"] = prompt_loss
        if index == 0:
            frame["prompt_loss"] = prompt_loss
    return frame


def _batch_losses(model: Any, prompts: list[list[int]], references: list[list[int]]) -> dict:
    """Per-query mean reference log-prob, reference token accuracy and mean prompt loss of one
    right-padded batch (one forward pass)."""
    import torch
    import torch.nn.functional as F

    lengths = [len(p) + len(r) for p, r in zip(prompts, references, strict=True)]
    width = max(lengths)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, (p, r) in enumerate(zip(prompts, references, strict=True)):
        ids[row, : lengths[row]] = torch.tensor(p + r, dtype=torch.long)
        mask[row, : lengths[row]] = 1
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()  # (B, T-1, V)
        targets = ids[:, 1:]  # (B, T-1)
        losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (B, T-1)
        correct = logits.argmax(-1) == targets
    out: dict[str, list[float]] = {"quality": [], "accuracy": [], "prompt_loss": []}
    for row, p in enumerate(prompts):
        n_prompt, end = len(p), lengths[row] - 1  # position t predicts token t + 1
        out["quality"].append(-float(losses[row, n_prompt - 1 : end].mean()))
        out["accuracy"].append(float(correct[row, n_prompt - 1 : end].float().mean()))
        out["prompt_loss"].append(
            float(losses[row, : n_prompt - 1].mean()) if n_prompt > 1 else 0.0
        )
    return out


def quantile_edges(train_gaps: np.ndarray, quantiles: Sequence[float]) -> np.ndarray:
    """The gap quantiles of the training split at ``quantiles`` (increasing)."""
    if len(train_gaps) == 0:
        raise ValueError("labels: the training split has no queries to take gap quantiles from")
    return np.quantile(np.asarray(train_gaps, dtype=float), list(quantiles))


def gap_labels(gaps: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Scores 1..5 from quality gaps: a gap at or below ``edges[0]`` is 5, above ``edges[-1]``
    is 1 (with the default four edges)."""
    bins = np.searchsorted(edges, np.asarray(gaps, dtype=float), side="left")  # 0..len(edges)
    return (len(edges) + 1 - bins).astype(int)


def add_labels(outcomes: Any, rung_names: Sequence[str], quantiles: Sequence[float]):
    """``outcomes`` with ``gap_<rung>`` and ``label_<rung>`` for every rung below the strongest,
    labels by the training split's pooled gap quantiles (see the module docstring), plus
    ``cheap_quality``, ``strong_quality``, ``cheap_<seconds|bytes|prompt_loss>`` /
    ``strong_<...>`` columns and ``label`` (the cheapest rung's)."""
    frame = outcomes.copy()
    strong = rung_names[-1]
    lower = list(rung_names[:-1])
    train = frame["split"] == "train"
    for name in lower:
        frame[f"gap_{name}"] = frame[f"quality_{strong}"] - frame[f"quality_{name}"]
    pooled = np.concatenate([frame.loc[train, f"gap_{name}"].to_numpy() for name in lower])
    edges = quantile_edges(pooled, quantiles)
    for name in lower:
        frame[f"label_{name}"] = gap_labels(frame[f"gap_{name}"].to_numpy(), edges)
    cheap = rung_names[0]
    frame["cheap_quality"] = frame[f"quality_{cheap}"]
    frame["strong_quality"] = frame[f"quality_{strong}"]
    for kind in ("seconds", "bytes", "prompt_loss"):
        frame[f"cheap_{kind}"] = frame[f"{kind}_{cheap}"]
        frame[f"strong_{kind}"] = frame[f"{kind}_{strong}"]
    frame["label"] = frame[f"label_{cheap}"]
    return frame, edges
