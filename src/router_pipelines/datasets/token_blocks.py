"""``train_tokens`` / ``validation_tokens`` persisted by reference to the token cache.

The data pipeline's token splits are memory-mapped stores inside the content-addressed token
cache (``<cache_dir>/<fingerprint>/<split>/``, :mod:`router_pipelines.data.cache`). Copying
them into the catalog would duplicate every token; passing them in memory ties every node that
reads them to the run that tokenized (one Airflow task for a whole pipeline, no
``--from-nodes`` past the data pipeline). This dataset saves a small JSON reference (the
store's folder, fingerprint, split and shape) and loads the store again by memory-mapping that
folder: the tokens are read from the cache, never copied, and a later ``kedro run`` (another
Airflow task) sees exactly the rows the first one tokenized.

A reference to a store that has changed since (another fingerprint, another shape) or been
deleted is an error naming the file and what to re-run, never a silent read of other data.

Why not kedro-datasets: its datasets serialise the data itself (pickle, numpy, parquet); a
reference to an existing memory map is what keeps a multi-gigabyte split free to hand on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kedro.io.core import AbstractDataset, DatasetError

from router_pipelines.storage import atomic_file

REFERENCE_FORMAT = 1


class TokenBlocksDataset(AbstractDataset):
    """A :class:`~router_pipelines.data.token_store.TokenBlocks` split, saved as a JSON
    reference to its store folder.

    Args:
        filepath: the reference file (``.json``).
    """

    def __init__(self, filepath: str, metadata: dict[str, Any] | None = None) -> None:
        self._filepath = Path(filepath)
        self.metadata = metadata

    def _describe(self) -> dict[str, Any]:
        return {"filepath": str(self._filepath)}

    def _exists(self) -> bool:
        return self._filepath.is_file()

    def save(self, data: Any) -> None:
        from router_pipelines.data.token_store import TokenBlocks

        if not isinstance(data, TokenBlocks):
            raise DatasetError(
                f"{self._filepath}: expected TokenBlocks (the data pipeline's token split), got "
                f"{type(data).__name__}"
            )
        if data.path is None:
            raise DatasetError(
                f"{self._filepath}: the {data.split} split lives in memory, not in a token "
                "store folder; only a stored split (the token cache's) can be saved by "
                "reference. Remove this catalog entry to pass it in memory."
            )
        folder, project = Path(data.path).resolve(), Path.cwd().resolve()
        if folder.is_relative_to(project):  # a moved clone keeps its references
            folder = folder.relative_to(project)
        reference = {
            "format": REFERENCE_FORMAT,
            "path": folder.as_posix(),
            "fingerprint": data.fingerprint,
            "split": data.split,
            "rows": len(data),
            "seq_len": data.seq_len,
        }
        with atomic_file(self._filepath) as staging:
            staging.write_text(json.dumps(reference, indent=2) + "\n", encoding="utf-8")

    def load(self) -> Any:
        from router_pipelines.data.token_store import TokenBlocks

        if not self._filepath.is_file():
            raise DatasetError(
                f"{self._filepath}: no token reference; run the data pipeline first "
                "(kedro run --pipelines=data_processing)"
            )
        reference = json.loads(self._filepath.read_text(encoding="utf-8"))
        if reference.get("format") != REFERENCE_FORMAT:
            raise DatasetError(
                f"{self._filepath}: token reference format {reference.get('format')!r}, expected "
                f"{REFERENCE_FORMAT}; re-run the data pipeline to rewrite it"
            )
        folder = Path(reference["path"])
        rerun = "re-run the data pipeline (kedro run --pipelines=data_processing)"
        try:
            blocks = TokenBlocks.open(folder)
        except FileNotFoundError as error:
            raise DatasetError(
                f"{self._filepath}: its token store {folder} is gone (token cache cleared?); "
                f"{rerun}"
            ) from error
        found = {
            "fingerprint": blocks.fingerprint,
            "split": blocks.split,
            "rows": len(blocks),
            "seq_len": blocks.seq_len,
        }
        changed = [
            f"{key} {reference[key]!r} -> {value!r}"
            for key, value in found.items()
            if reference[key] != value
        ]
        if changed:
            what = ", ".join(changed)
            raise DatasetError(
                f"{self._filepath}: the token store {folder} is not the one saved ({what}); {rerun}"
            )
        return blocks
