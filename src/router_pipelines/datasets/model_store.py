"""Every saved version of a model, read lazily: :class:`ModelVersionsDataset`.

A versioned :class:`~router_pipelines.datasets.PretrainedModelDataset` at ``path`` keeps each
model in ``<path>/<version>/<name>/`` (``name`` is the last part of ``path``). A provider node
that may reuse an earlier model needs to look at those versions (their ``router_pipelines.json``)
before deciding whether to load one; Kedro's versioned dataset only ever loads one. This dataset
hands the node a :class:`ModelStore` instead, the way ``PartitionedDataset`` hands out load
callables: listing reads small JSON files, weights are read only by :meth:`StoredModel.load`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kedro.io import AbstractDataset, DatasetError
from kedro_datasets._typing import TablePreview

from router_pipelines.models.bundle import BUNDLE_FILE, ModelBundle, load_bundle
from router_pipelines.storage import OLD_PREFIX, TMP_PREFIX

CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class StoredModel:
    """One complete saved version: its folder and metadata; :meth:`load` reads the weights."""

    version: str
    path: Path  # <root>/<version>/<name>
    metadata: Mapping[str, Any]  # router_pipelines.json
    trust_remote_code: bool = field(default=False, repr=False)

    def load(self) -> ModelBundle:
        """The bundle, with ``source_dir`` set to this folder: saving it again to the same
        versioned dataset writes nothing (see ``PretrainedModelDataset.save``)."""
        return load_bundle(self.path, trust_remote_code=self.trust_remote_code)


class ModelStore:
    """The complete versions under one versioned model folder, newest first."""

    def __init__(self, path: str | Path, trust_remote_code: bool = False) -> None:
        self.path = Path(path)
        self._trust_remote_code = trust_remote_code

    def versions(self) -> list[StoredModel]:
        """Every complete version (``config.json`` and ``router_pipelines.json`` present),
        newest first (Kedro's timestamps sort by time). Half-written or interrupted saves
        (``.tmp-*`` / ``.old-*`` folders, a version folder without the model) are skipped.

        Raises:
            ValueError: a ``router_pipelines.json`` that is not a JSON object, naming the file.
        """
        if not self.path.is_dir():
            return []
        stored = []
        for version_dir in sorted(self.path.iterdir(), key=lambda p: p.name, reverse=True):
            if version_dir.name.startswith((".", TMP_PREFIX, OLD_PREFIX)):
                continue
            folder = version_dir / self.path.name
            meta_file = folder / BUNDLE_FILE
            if not ((folder / CONFIG_FILE).is_file() and meta_file.is_file()):
                continue
            stored.append(
                StoredModel(
                    version=version_dir.name,
                    path=folder,
                    metadata=_read_metadata(meta_file),
                    trust_remote_code=self._trust_remote_code,
                )
            )
        return stored

    def newest(
        self, where: Callable[[Mapping[str, Any]], bool] | None = None
    ) -> StoredModel | None:
        """The newest version whose metadata satisfies ``where`` (any, without it); ``None``
        when there is none."""
        for stored in self.versions():
            if where is None or where(stored.metadata):
                return stored
        return None

    def __repr__(self) -> str:
        return f"ModelStore({str(self.path)!r})"


def _read_metadata(meta_file: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{meta_file}: cannot read the model's metadata: {err}") from err
    if not isinstance(metadata, dict):
        raise ValueError(f"{meta_file}: expected a JSON object, got {type(metadata).__name__}")
    return metadata


class ModelVersionsDataset(AbstractDataset):
    """Read-only: loads a :class:`ModelStore` over a versioned model folder.

    Catalog example (the same ``path`` as the versioned ``PretrainedModelDataset``)::

        base_saved_models:
          type: router_pipelines.datasets.ModelVersionsDataset
          path: data/06_models/base_lm
    """

    def __init__(
        self,
        path: str,
        trust_remote_code: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self._path = Path(path)
        self._trust_remote_code = trust_remote_code
        self.metadata = metadata

    def load(self) -> ModelStore:
        return ModelStore(self._path, trust_remote_code=self._trust_remote_code)

    def save(self, data: Any) -> None:
        raise DatasetError(
            f"ModelVersionsDataset({self._path}) is read-only; save models through the "
            "versioned PretrainedModelDataset at the same path"
        )

    def _exists(self) -> bool:
        return True  # an empty store is a valid store

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path), "trust_remote_code": self._trust_remote_code}

    def preview(self, nrows: int = 10) -> TablePreview:
        """Kedro-Viz: the newest ``nrows`` saved versions, one row each (version, family, how
        it was made, its validation numbers), from their metadata; no weights are read."""
        columns = ["version", "family", "origin", "global_step", "validation_perplexity"]
        rows = []
        for stored in self.load().versions()[:nrows]:
            training = stored.metadata.get("training") or {}
            rows.append(
                [
                    stored.version,
                    stored.metadata.get("family", "causal_lm"),
                    training.get("origin"),
                    training.get("global_step"),
                    training.get("validation_perplexity"),
                ]
            )
        # the table layout Kedro-Viz reads (pandas' to_dict(orient="split"))
        return TablePreview({"index": list(range(len(rows))), "columns": columns, "data": rows})
