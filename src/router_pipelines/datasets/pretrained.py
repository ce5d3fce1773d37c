"""Kedro datasets that store models and tokenizers as standard Hugging Face folders.

kedro-datasets ships only *loading* datasets for Hugging Face objects, so saving a trained
model as a ``save_pretrained`` folder (safetensors) is written here. Both datasets write into
a temporary sibling folder and rename it into place, so a run killed mid-save never leaves a
half-written model where the next run would load it.

A model is passed around as a :class:`~router_pipelines.models.bundle.ModelBundle` (model +
tokenizer) so every saved folder can be used on its own with ``from_pretrained``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractDataset, AbstractVersionedDataset
from kedro.io.core import Version

from router_pipelines.models.bundle import ModelBundle, load_bundle, save_bundle


def _write_atomically(target: Path, write: Any) -> None:
    """Call ``write(tmp_dir)`` then move ``tmp_dir`` to ``target`` (which must not exist yet)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        write(tmp_dir)
        if target.exists():  # an unversioned dataset replaces its previous folder
            old = target.with_name(f".{target.name}-old")
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
            tmp_dir.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp_dir.rename(target)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise


class PretrainedTokenizerDataset(AbstractDataset):
    """A tokenizer saved with ``save_pretrained`` and loaded with ``AutoTokenizer``.

    Catalog example::

        tokenizer:
          type: router_pipelines.datasets.PretrainedTokenizerDataset
          path: data/06_models/tokenizer
    """

    def __init__(self, path: str, trust_remote_code: bool = False) -> None:
        self._path = Path(path)
        self._trust_remote_code = trust_remote_code

    def load(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(
            str(self._path), trust_remote_code=self._trust_remote_code
        )

    def save(self, data: Any) -> None:
        _write_atomically(self._path, data.save_pretrained)

    def _exists(self) -> bool:
        return (self._path / "tokenizer_config.json").is_file()

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._path)}


class PretrainedModelDataset(AbstractVersionedDataset):
    """A :class:`ModelBundle` stored as one ``save_pretrained`` folder, optionally versioned.

    With ``versioned: true`` every save goes to ``<path>/<timestamp>/<name>/`` so an earlier
    model is never overwritten, and a load takes the newest complete version. With
    ``missing_ok: true`` loading when nothing was saved yet returns ``None`` instead of failing.

    Catalog example::

        base_model:
          type: router_pipelines.datasets.PretrainedModelDataset
          path: data/06_models/base_lm
          versioned: true
    """

    def __init__(
        self,
        path: str,
        version: Version | None = None,
        trust_remote_code: bool = False,
        missing_ok: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            filepath=PurePosixPath(Path(path).as_posix()),
            version=version,
            exists_function=lambda p: (Path(p) / "config.json").is_file(),
        )
        self._trust_remote_code = trust_remote_code
        self._missing_ok = missing_ok
        self.metadata = metadata

    def load(self) -> ModelBundle | None:
        if self._missing_ok and not self._exists():
            return None
        return load_bundle(Path(self._get_load_path()), trust_remote_code=self._trust_remote_code)

    def save(self, data: ModelBundle) -> None:
        root = Path(self._filepath).resolve()
        if data.source_dir is not None and root in Path(data.source_dir).parents:
            # Reused unchanged (e.g. the switchable pipeline found a compatible base model):
            # it is already stored here, so no duplicate version is written, and this run's
            # save version becomes the reused one (Kedro then loads exactly that folder).
            if self._version is not None:
                reused = Path(data.source_dir).parent.name
                self._version = Version(self._version.load, reused)
                self._clear_version_cache()
            return
        target = Path(self._get_save_path())
        _write_atomically(target, lambda tmp: save_bundle(data, tmp))
        self._clear_version_cache()

    def _exists(self) -> bool:
        try:
            return (Path(self._get_load_path()) / "config.json").is_file()
        except Exception:  # no version saved yet
            return False

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath), "version": self._version}
