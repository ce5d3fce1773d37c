"""Kedro datasets that store models and tokenizers as standard Hugging Face folders.

kedro-datasets ships only *loading* datasets for Hugging Face objects, so saving a trained
model as a ``save_pretrained`` folder (safetensors) is written here. Both datasets write through
:func:`router_pipelines.storage.atomic_directory` (a temporary sibling folder, fsynced, renamed
into place), so a run killed mid-save never leaves a half-written folder where the next run
would load it.

Both can be versioned (``versioned: true``): every save goes to ``<path>/<timestamp>/<name>/``
so an earlier model or tokenizer is never overwritten, and a load takes the newest complete one.

A model is passed around as a :class:`~router_pipelines.models.bundle.ModelBundle` (model +
tokenizer) so every saved folder can be used on its own with ``from_pretrained``.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from kedro.io import AbstractVersionedDataset
from kedro.io.core import Version
from kedro_datasets._typing import JSONPreview

from router_pipelines.models.bundle import ModelBundle, load_bundle, save_bundle
from router_pipelines.storage import atomic_directory, digest_path

TOKENIZER_FILE = "tokenizer_config.json"  # every save_pretrained tokenizer folder has it
MODEL_CONFIG_FILE = "config.json"


def _existing_parent(path: Path) -> str:
    """The nearest existing folder above ``path`` (a scratch folder on the same disk)."""
    for parent in path.parents:
        if parent.is_dir():
            return str(parent)
    return "."


def _has(name: str):
    return lambda folder: (Path(folder) / name).is_file()


def _json_file(path: Path) -> dict[str, Any]:
    """The JSON object at ``path`` for a preview, or ``{}`` (a preview never fails a page)."""
    from router_pipelines.models.hf_files import read_json_file

    try:
        data = read_json_file(path)
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def folder_preview(folder: Path, versioned: bool, **fields: Any) -> JSONPreview:
    """Kedro-Viz's preview of a saved folder: ``fields``, its version (``<path>/<version>/<name>``
    when ``versioned``), and its files with sizes (the weights are listed, never read)."""
    import json

    files = {
        item.name: f"{item.stat().st_size / 1e6:.2f} MB"
        for item in sorted(folder.iterdir())
        if item.is_file()
    }
    version = folder.parent.name if versioned else None
    return JSONPreview(json.dumps({**fields, "version": version, "files": files}, default=str))


class PretrainedTokenizerDataset(AbstractVersionedDataset):
    """A tokenizer saved with ``save_pretrained`` and loaded with ``data.tokenizer.load_saved_tokenizer``.

    Catalog example::

        tokenizer:
          type: router_pipelines.datasets.PretrainedTokenizerDataset
          path: data/06_models/tokenizer
          versioned: true  # optional: keep every tokenizer, load the newest
    """

    def __init__(
        self,
        path: str,
        version: Version | None = None,
        trust_remote_code: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(
            filepath=PurePosixPath(Path(path).as_posix()),
            version=version,
            exists_function=_has(TOKENIZER_FILE),
        )
        self._trust_remote_code = trust_remote_code
        self.metadata = metadata

    def load(self) -> Any:
        from router_pipelines.data.tokenizer import load_saved_tokenizer

        return load_saved_tokenizer(self._get_load_path(), self._trust_remote_code)

    def save(self, data: Any) -> None:
        """Write a new version, unless it would be a byte-identical copy of the newest one.

        A warm run reads its tokenizer back from the token cache; writing it again every run
        would pile up identical versions, so this run's version becomes the existing one.
        """
        target = Path(self._get_save_path())
        newest = self._newest_version() if self._version is not None else None
        with tempfile.TemporaryDirectory(prefix=".tok-", dir=_existing_parent(target)) as tmp:
            data.save_pretrained(tmp)
            if newest is not None and digest_path(tmp) == digest_path(newest):
                self._version = Version(self._version.load, newest.parent.name)
                self._clear_version_cache()
                return
            with atomic_directory(target) as staging:
                for item in Path(tmp).iterdir():
                    shutil.move(str(item), staging / item.name)
        self._clear_version_cache()

    def _newest_version(self) -> Path | None:
        try:
            folder = Path(self._get_load_path())
        except Exception:  # no version saved yet
            return None
        return folder if (folder / TOKENIZER_FILE).is_file() else None

    def _exists(self) -> bool:
        try:
            return (Path(self._get_load_path()) / TOKENIZER_FILE).is_file()
        except Exception:  # versioned, and no version saved yet
            return False

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath), "version": self._version}

    def preview(self) -> JSONPreview:  # Kedro-Viz reads this annotation
        """Kedro-Viz: the newest tokenizer's size and special tokens (from its JSON files; the
        tokenizer is not loaded). ``None`` (no preview) before one is saved."""
        if not self._exists():
            return None
        folder = Path(self._get_load_path())
        config = _json_file(folder / TOKENIZER_FILE)
        vocab = (_json_file(folder / "tokenizer.json").get("model") or {}).get("vocab") or {}
        special = {
            key: value
            for key, value in config.items()
            if key.endswith("_token") and isinstance(value, str)
        }
        return folder_preview(
            folder,
            self._version is not None,
            tokenizer_class=config.get("tokenizer_class"),
            vocab_size=len(vocab) or None,
            model_max_length=config.get("model_max_length"),
            special_tokens=special,
        )


class PretrainedModelDataset(AbstractVersionedDataset):
    """A :class:`ModelBundle` stored as one ``save_pretrained`` folder, optionally versioned.

    With ``missing_ok: true`` loading when nothing was saved yet returns ``None`` instead of
    failing. To look at every saved version (and load one lazily), read the same ``path`` with
    :class:`~router_pipelines.datasets.ModelVersionsDataset`.

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
            exists_function=_has(MODEL_CONFIG_FILE),
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
            # Reused unchanged (e.g. a provider node found a compatible saved model): it is
            # already stored here, so no duplicate version is written, and this run's save
            # version becomes the reused one, and so does its load version: a later node of
            # the same run must read exactly that folder, not whatever is newest (another
            # run may have saved a newer version since the reused one).
            if self._version is not None:
                reused = Path(data.source_dir).parent.name
                self._version = Version(reused, reused)
                self._clear_version_cache()
            return
        with atomic_directory(Path(self._get_save_path())) as staging:
            save_bundle(data, staging)
        self._clear_version_cache()

    def _exists(self) -> bool:
        try:
            return (Path(self._get_load_path()) / MODEL_CONFIG_FILE).is_file()
        except Exception:  # no version saved yet
            return False

    def _describe(self) -> dict[str, Any]:
        return {"path": str(self._filepath), "version": self._version}

    def preview(self) -> JSONPreview:  # Kedro-Viz reads this annotation
        """Kedro-Viz: the newest saved model's family, architecture, training summary and files,
        read from its JSON files (no weights are loaded). ``None`` (no preview) before one is saved."""
        from router_pipelines.models.bundle import BUNDLE_FILE

        if not self._exists():
            return None
        folder = Path(self._get_load_path())
        metadata = _json_file(folder / BUNDLE_FILE)
        config = _json_file(folder / MODEL_CONFIG_FILE)
        architecture = {
            key: config[key]
            for key in ("model_type", "vocab_size", "n_positions", "n_embd", "n_layer", "n_head")
            if key in config
        }
        return folder_preview(
            folder,
            self._version is not None,
            family=metadata.get("family", "causal_lm"),
            architecture=architecture,
            training=metadata.get("training") or {},
        )


DISABLED_FILE = "disabled.json"


class OptionalModelDataset(PretrainedModelDataset):
    """A :class:`PretrainedModelDataset` for a model a run may skip (a node returning
    ``{"enabled": False, ...}``, e.g. ``depth_routing.dense_baseline.enabled: false``).

    The skip is saved as a version of its own (``disabled.json``), so a later task or run
    loads it back as skipped, never an older model. :class:`ModelVersionsDataset` lists only
    the versions that hold a model.
    """

    def __init__(self, path: str, **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        has_model, has_marker = _has(MODEL_CONFIG_FILE), _has(DISABLED_FILE)
        # Kedro's newest-version lookup and _exists both go through this
        self._exists_function = lambda folder: has_model(folder) or has_marker(folder)

    def load(self) -> ModelBundle | dict[str, Any] | None:
        if self._exists():
            marker = Path(self._get_load_path()) / DISABLED_FILE
            if marker.is_file():
                return json.loads(marker.read_text(encoding="utf-8"))
        return super().load()

    def save(self, data: ModelBundle | dict[str, Any]) -> None:
        if not isinstance(data, dict):
            super().save(data)
            return
        if data.get("enabled") is not False:
            raise ValueError(
                f"{self._filepath}: expected a model bundle or a skip marker "
                f"({{'enabled': False}}), got a dict with enabled={data.get('enabled')!r}"
            )
        with atomic_directory(Path(self._get_save_path())) as staging:
            (staging / DISABLED_FILE).write_text(json.dumps(data), encoding="utf-8")
        self._clear_version_cache()

    def _exists(self) -> bool:
        try:
            return self._exists_function(str(self._get_load_path()))
        except Exception:  # no version saved yet
            return False
