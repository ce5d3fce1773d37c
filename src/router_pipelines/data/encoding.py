"""Tokenize chunks of examples, in this process or in ``num_proc`` worker processes, in order.

A *task* is a picklable callable from a chunk (a list of texts or chats) to arrays. With
``num_proc > 1`` each worker receives the task once (pickled at start-up) and the chunks one by
one; :func:`ordered_map` yields the results in submission order with a bounded number of chunks
in flight, so the output is identical to ``num_proc = 1`` and memory stays bounded whatever the
corpus size. (``multiprocessing.Pool.imap`` would be simpler, but its feeder thread drains the
whole input iterator into the task queue: the corpus would end up in memory.)

Workers are *spawned*, not forked: the parent may hold threads (the tokenizers thread pool,
torch, MLflow), and forking a threaded process can deadlock. This module imports only numpy
and ``tokenizers``, so a pretraining worker starts in a fraction of a second.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np

_TASK: Callable[[Any], Any] | None = None  # the task of this worker process


class TextEncoder:
    """Texts to token ids, no special tokens, exactly as ``tokenizer(texts, add_special_tokens=
    False)["input_ids"]``; picklable.

    A fast tokenizer is reduced to its ``tokenizers`` backend, which pickles as JSON and whose
    ``encode_batch_fast`` skips the offsets and the per-token Python lists of transformers'
    ``BatchEncoding``; the tokenizer's settings are first applied to the backend by one call of
    the tokenizer itself (transformers sets truncation, padding and special-token splitting on
    the backend per call). Other tokenizers are kept whole.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = None
        self.backend = None
        self.split_special_tokens = False
        if getattr(tokenizer, "is_fast", False):
            tokenizer([""], add_special_tokens=False)  # sync truncation/padding onto the backend
            self.backend = tokenizer.backend_tokenizer
            self.split_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        else:
            self.tokenizer = tokenizer

    def __call__(self, texts: Sequence[str]) -> list[list[int]]:
        if self.backend is None:
            return self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        self.backend.encode_special_tokens = self.split_special_tokens
        encodings = self.backend.encode_batch_fast(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]


def flatten_with_eos(runs: Iterable[Sequence[int]], eos: int, dtype: np.dtype) -> np.ndarray:
    """``run + [eos]`` for every run, concatenated into one 1-D array of ``dtype``.

    Raises:
        OverflowError: an id does not fit ``dtype`` (numpy refuses out-of-range ints).
    """
    pieces = itertools.chain.from_iterable((run, (eos,)) for run in runs)
    return np.fromiter(itertools.chain.from_iterable(pieces), dtype=dtype)


class BlockPacker:
    """Cut a stream of token runs into ``(k, T)`` blocks; the rest waits for the next run.

    Feeding the corpus chunk by chunk gives the blocks of concatenating everything first
    and cutting once; the final ragged tail (< ``T`` tokens) is dropped, as then.
    """

    def __init__(self, seq_len: int, dtype: np.dtype) -> None:
        self.seq_len = seq_len
        self.carry = np.empty(0, dtype=dtype)
        self.tokens = 0  # every token fed, the dropped tail included

    def add(self, flat: np.ndarray) -> np.ndarray:
        """Append ``flat`` (1-D) and return the complete blocks, ``(k, T)``."""
        self.tokens += flat.size
        stream = np.concatenate([self.carry, flat]) if self.carry.size else flat
        n_blocks = stream.size // self.seq_len
        cut = n_blocks * self.seq_len
        self.carry = stream[cut:].copy()
        return stream[:cut].reshape(n_blocks, self.seq_len)  # (k, T)


class PretrainingTask:
    """Chunk of texts -> ``doc + EOS`` token ids, concatenated (1-D, the store's id dtype)."""

    def __init__(self, encoder: TextEncoder, eos: int, dtype: np.dtype) -> None:
        self.encoder, self.eos, self.dtype = encoder, eos, np.dtype(dtype)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return flatten_with_eos(self.encoder(texts), self.eos, self.dtype)


class InstructionTask:
    """Chunk of chats -> ``(input_ids, labels, attention_mask, truncated, dropped)``, see
    :func:`router_pipelines.data.packing.encode_conversations`."""

    def __init__(self, tokenizer: Any, seq_len: int) -> None:
        self.tokenizer, self.seq_len = tokenizer, seq_len

    def __call__(self, chats: Sequence[Any]) -> tuple:
        from router_pipelines.data.packing import encode_conversations  # needs transformers

        return encode_conversations(self.tokenizer, chats, self.seq_len)


def ordered_map(
    task: Callable[[Any], Any],
    chunks: Iterable[Any],
    num_proc: int = 1,
    max_pending: int | None = None,
) -> Iterator[Any]:
    """``task(chunk)`` for every chunk, in order; in ``num_proc`` spawned workers when > 1.

    At most ``max_pending`` (default ``2 * num_proc``) chunks are submitted and not yet
    yielded, so memory holds a few chunks, never the input.
    """
    if num_proc <= 1:
        for chunk in chunks:
            yield task(chunk)
        return
    limit = max_pending or 2 * num_proc
    pool = ProcessPoolExecutor(
        max_workers=num_proc,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_install_task,
        initargs=(task,),
    )
    pending: deque[Future] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(_run_task, chunk))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _install_task(task: Callable[[Any], Any]) -> None:
    global _TASK
    # One tokenizer thread per worker: the workers are the parallelism, and more threads than
    # cores only add hand-offs.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    os.environ["RAYON_NUM_THREADS"] = "1"
    _TASK = task


def _run_task(chunk: Any) -> Any:
    assert _TASK is not None, "worker started without a task"
    return _TASK(chunk)
