"""A store of fixed-length token blocks: one split = a folder of ``.npy`` files, memory-mapped.

Layout of one split (``<cache_dir>/<fingerprint>/<split>/``, see :mod:`~.cache`)::

    blocks.json          rows, seq_len, token counts, dtypes, the fingerprint and split
    input_ids.npy        (N, T) uint16 when every id fits (vocab <= 65536), else int32
    labels.npy           (N, T) int32, -100 where not supervised  [only if labels != input_ids]
    attention_mask.npy   (N, T) uint8                             [only if not all ones]

Pretraining blocks are attended and supervised everywhere, so they store ``input_ids`` alone
(2 bytes per token with our vocabularies): a file that absent arrays are derived from costs
nothing to read. Readers open the files with ``np.load(mmap_mode="r")``: opening reads the
headers only, and a row is read from disk when it is indexed.

Why numpy and not Parquet/Arrow (or ``datasets``): training indexes random rows of one
``(N, T)`` integer matrix, which a memory-mapped ``.npy`` serves as one fancy-index with no
decoding. Parquet must decompress whole row groups to read a row; an Arrow file written in
streamed batches is memory-mappable but chunked, so a ``(N, T)`` view needs a copy, and
``datasets`` adds per-row Python formatting on top of Arrow. ``.npy`` needs the row count in
its header, which packing only knows at the end: :class:`NpyRowWriter` writes a fixed-size
header, streams the rows, then rewrites the header (the documented format, padded with spaces).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from router_pipelines.constants import IGNORE_INDEX

STORE_FORMAT_VERSION = 2  # bump when the layout or the meaning of a stored array changes
BLOCKS_FILE = "blocks.json"
ARRAYS = ("input_ids", "labels", "attention_mask")
_HEADER_BYTES = 128  # magic + header of a v1.0 .npy, padded: room for any (N, T) shape
_UINT16_IDS = 1 << 16


def ids_dtype(vocab_size: int) -> np.dtype:
    """The smallest id dtype of a vocabulary: uint16 up to 65536 ids, else int32."""
    return np.dtype(np.uint16) if vocab_size <= _UINT16_IDS else np.dtype(np.int32)


class NpyRowWriter:
    """Append rows to a ``.npy`` file whose row count is only known when it is closed.

    Args:
        path: the file to create.
        dtype: element type.
        row_shape: shape of one row, e.g. ``(T,)``.
    """

    def __init__(self, path: str | Path, dtype: np.dtype, row_shape: tuple[int, ...]) -> None:
        self.path = Path(path)
        self.dtype = np.dtype(dtype)  # native order; the header's descr says which
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._handle = self.path.open("wb")
        self._handle.write(_npy_header(self.dtype, (0, *self.row_shape)))

    def append(self, rows: np.ndarray) -> None:
        """Write ``rows`` of shape ``(k, *row_shape)`` (cast to the file's dtype)."""
        if tuple(rows.shape[1:]) != self.row_shape:
            raise ValueError(
                f"{self.path.name}: rows of shape {rows.shape}, not (k, {self.row_shape})"
            )
        self._handle.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += rows.shape[0]

    def close(self) -> int:
        """Rewrite the header with the final row count; returns the row count."""
        self._handle.seek(0)
        self._handle.write(_npy_header(self.dtype, (self.rows, *self.row_shape)))
        self._handle.close()
        return self.rows

    def abort(self) -> None:
        self._handle.close()


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    header = repr(
        {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    ).encode("latin1")
    prefix = np.lib.format.magic(1, 0)
    room = _HEADER_BYTES - len(prefix) - 2  # 2 bytes hold the header length
    if len(header) + 1 > room:
        raise ValueError(f"shape {shape}: too large for a {_HEADER_BYTES}-byte .npy header")
    body = header + b" " * (room - len(header) - 1) + b"\n"
    return prefix + struct.pack("<H", len(body)) + body


class SplitWriter:
    """Write one split's blocks into ``folder`` in streamed chunks; :meth:`close` seals it.

    Args:
        folder: the split's folder (created).
        seq_len: ``T``.
        id_dtype: see :func:`ids_dtype`.
        masked: store ``labels`` and ``attention_mask`` (instruction mode); without it every
            position is attended and labels equal the ids (pretraining).
    """

    def __init__(self, folder: str | Path, seq_len: int, id_dtype: np.dtype, masked: bool) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.seq_len = seq_len
        self.writers = {
            "input_ids": NpyRowWriter(self.folder / "input_ids.npy", id_dtype, (seq_len,))
        }
        if masked:
            self.writers["labels"] = NpyRowWriter(self.folder / "labels.npy", np.int32, (seq_len,))
            self.writers["attention_mask"] = NpyRowWriter(
                self.folder / "attention_mask.npy", np.uint8, (seq_len,)
            )
        self.tokens = 0
        self.supervised_tokens = 0

    @property
    def rows(self) -> int:
        return self.writers["input_ids"].rows

    def append(
        self,
        input_ids: np.ndarray,
        labels: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
    ) -> None:
        """Add ``(k, T)`` rows; ``labels``/``attention_mask`` are required when ``masked``."""
        self.writers["input_ids"].append(input_ids)
        if "labels" in self.writers:
            if labels is None or attention_mask is None:
                raise ValueError("masked split: labels and attention_mask are required")
            self.writers["labels"].append(labels)
            self.writers["attention_mask"].append(attention_mask)
            self.tokens += int(attention_mask.sum())
            self.supervised_tokens += int((labels != IGNORE_INDEX).sum())
        else:
            self.tokens += input_ids.size
            self.supervised_tokens += input_ids.size

    def close(self, split: str, fingerprint: str) -> dict[str, Any]:
        """Seal every array and write ``blocks.json``; returns its content."""
        for writer in self.writers.values():
            writer.close()
        info = {
            "format": STORE_FORMAT_VERSION,
            "fingerprint": fingerprint,
            "split": split,
            "rows": self.rows,
            "seq_len": self.seq_len,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised_tokens,
            "arrays": {name: str(w.dtype) for name, w in self.writers.items()},
        }
        (self.folder / BLOCKS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        return info

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()


class TokenBlocks:
    """A read-only view of one split's ``(N, T)`` token blocks, memory-mapped or in memory.

    What the data pipeline hands to training (``train_tokens``, ``validation_tokens``).
    ``fingerprint`` is the cache entry's fingerprint (data, tokenizer, seq_len, mode): the data
    identity of a model trained on it. Build one with :meth:`open` (a store folder) or
    :meth:`from_arrays` (tests, small in-memory data).

    ``input_ids`` keeps the store's dtype (uint16 or int32); ``labels`` (``-100`` where not
    supervised) and ``attention_mask`` are derived without a copy when the store left them out.
    :meth:`gather` returns int64 rows for a batch.
    """

    def __init__(
        self,
        input_ids: np.ndarray,
        labels: np.ndarray | None = None,
        attention_mask: np.ndarray | None = None,
        *,
        fingerprint: str,
        split: str,
        path: Path | None = None,
        num_tokens: int | None = None,
        supervised_tokens: int | None = None,
    ) -> None:
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids: expected (N, T) token ids, got shape {input_ids.shape}")
        for name, array in (("labels", labels), ("attention_mask", attention_mask)):
            if array is not None and array.shape != input_ids.shape:
                raise ValueError(
                    f"{name}: shape {array.shape} differs from input_ids {input_ids.shape}"
                )
        self._input_ids = input_ids
        self._labels = labels
        self._attention_mask = attention_mask
        self.fingerprint = fingerprint
        self.split = split
        self.path = path
        self._num_tokens = num_tokens
        self._supervised_tokens = supervised_tokens

    @classmethod
    def open(cls, folder: str | Path) -> TokenBlocks:
        """Memory-map the split stored in ``folder`` (reads ``blocks.json`` and .npy headers).

        Raises:
            FileNotFoundError: no ``blocks.json`` in ``folder``.
            ValueError: a store of another format version, or arrays that do not match it.
        """
        folder = Path(folder)
        info = json.loads((folder / BLOCKS_FILE).read_text(encoding="utf-8"))
        if info.get("format") != STORE_FORMAT_VERSION:
            raise ValueError(
                f"{folder}: token store format {info.get('format')!r}, expected "
                f"{STORE_FORMAT_VERSION}; delete it to rebuild"
            )
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r") for name in info["arrays"]}
        shape = (info["rows"], info["seq_len"])
        for name, array in arrays.items():
            if array.shape != shape:
                raise ValueError(
                    f"{folder / name}.npy: shape {array.shape}, blocks.json says {shape}"
                )
        return cls(
            arrays["input_ids"],
            arrays.get("labels"),
            arrays.get("attention_mask"),
            fingerprint=info["fingerprint"],
            split=info["split"],
            path=folder,
            num_tokens=info["tokens"],
            supervised_tokens=info["supervised_tokens"],
        )

    @classmethod
    def from_arrays(
        cls,
        input_ids: Any,
        labels: Any = None,
        attention_mask: Any = None,
        fingerprint: str = "in-memory",
        split: str = "in-memory",
    ) -> TokenBlocks:
        """Blocks from ``(N, T)`` arrays (anything ``np.asarray`` takes), held in memory.

        ``labels`` default to ``input_ids`` where ``attention_mask`` is 1 and ``-100``
        elsewhere; ``attention_mask`` defaults to all ones.
        """
        ids = _read_only(np.asarray(input_ids))
        mask = None if attention_mask is None else _read_only(np.asarray(attention_mask))
        if labels is not None:
            labels = _read_only(np.asarray(labels))
        elif mask is not None and mask.shape == ids.shape and not mask.all():
            labels = _read_only(np.where(mask.astype(bool), ids, IGNORE_INDEX))
        for name, array in (("input_ids", ids), ("labels", labels), ("attention_mask", mask)):
            if array is not None and array.size and not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"{name}: expected integers, got dtype {array.dtype}")
        return cls(ids, labels, mask, fingerprint=fingerprint, split=split)

    @property
    def seq_len(self) -> int:
        """Tokens per block (``T``)."""
        return self._input_ids.shape[1]

    def __len__(self) -> int:
        return self._input_ids.shape[0]

    @property
    def input_ids(self) -> np.ndarray:
        """``(N, T)`` token ids (read-only; memory-mapped for a store)."""
        return self._input_ids

    @property
    def labels(self) -> np.ndarray:
        """``(N, T)`` labels, ``-100`` where not supervised (the ids themselves when all are)."""
        return self._input_ids if self._labels is None else self._labels

    @property
    def attention_mask(self) -> np.ndarray:
        """``(N, T)`` 1 for attended tokens, 0 for padding (a zero-copy broadcast when all 1)."""
        if self._attention_mask is None:
            return np.broadcast_to(np.ones((1, 1), dtype=np.uint8), self._input_ids.shape)
        return self._attention_mask

    @property
    def num_tokens(self) -> int:
        """Attended tokens (padding excluded)."""
        if self._num_tokens is None:
            self._num_tokens = (
                self._input_ids.size
                if self._attention_mask is None
                else int(np.count_nonzero(self._attention_mask))
            )
        return self._num_tokens

    @property
    def supervised_tokens(self) -> int:
        """Tokens with a label (not ``-100``)."""
        if self._supervised_tokens is None:
            self._supervised_tokens = (
                self._input_ids.size
                if self._labels is None
                else int(np.count_nonzero(self._labels != IGNORE_INDEX))
            )
        return self._supervised_tokens

    def gather(self, indices: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Rows ``indices`` of each array as int64 ``(B, T)`` arrays (one fancy-index each)."""
        index = np.asarray(indices, dtype=np.int64)
        ids = self._input_ids[index].astype(np.int64)  # (B, T)
        labels = ids.copy() if self._labels is None else self._labels[index].astype(np.int64)
        if self._attention_mask is None:
            mask = np.ones_like(ids)
        else:
            mask = self._attention_mask[index].astype(np.int64)
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    def __deepcopy__(self, memo: dict) -> TokenBlocks:
        # Kedro's MemoryDataset deep-copies what it hands between nodes (all but pandas and
        # numpy). The arrays are read-only (a memory map opened "r", or read-only views), so
        # sharing one object is safe, and copying a store would read it whole into memory.
        return self

    def __reduce__(self) -> tuple:
        # A stored split pickles as its folder (DataLoader workers, multiprocessing): the
        # receiver maps the same files instead of receiving a copy of the data.
        if self.path is not None:
            return (TokenBlocks.open, (str(self.path),))
        arrays = (np.asarray(self._input_ids), self._labels, self._attention_mask)
        return (_rebuild, (arrays, self.fingerprint, self.split))

    def __repr__(self) -> str:
        where = str(self.path) if self.path is not None else "memory"
        return (
            f"TokenBlocks(split={self.split!r}, rows={len(self)}, seq_len={self.seq_len}, "
            f"fingerprint={self.fingerprint[:12]!r}, at={where!r})"
        )


def _rebuild(arrays: tuple, fingerprint: str, split: str) -> TokenBlocks:
    ids, labels, mask = arrays
    return TokenBlocks(ids, labels, mask, fingerprint=fingerprint, split=split)


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view
