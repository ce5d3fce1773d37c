"""Crash-safe writing and tie-aware weight loading, shared by every layer that persists files.

* :func:`atomic_directory` — build a folder under a temporary sibling name, fsync it, then rename
  it into place: a run killed at any moment leaves either the previous folder or the complete new
  one (plus, at worst, a ``.tmp-*`` sibling that the next writer removes), never half a folder.
* :func:`write_json` / :func:`atomic_file` — the same for one file (temporary file + ``os.replace``).
* :func:`shared_storage_once` — a state dict safetensors can save (tied weights once).
* :func:`load_weights` — load ``model.safetensors`` (or a sharded index) into a module, accepting
  exactly the keys left out because they share storage with a saved tensor (GPT-2's tied LM
  head, a quantizer shared by a tied embedding and head) and nothing else.

Local file systems only: object stores publish whole objects on their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

TMP_PREFIX = ".tmp-"
OLD_PREFIX = ".old-"
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"


def temporary_sibling(target: Path) -> Path:
    """A fresh hidden name beside ``target`` (same file system, so a rename is atomic)."""
    return target.with_name(f"{TMP_PREFIX}{target.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_directory(target: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; on success publish it as ``target``.

    Args:
        target: the folder to create (its parent is created if needed).
        replace: an existing ``target`` is swapped out for the new one (moved aside, then
            deleted); with ``False`` an existing ``target`` raises ``FileExistsError`` before
            anything is written.

    On an exception inside the block the temporary folder is removed and ``target`` is left as
    it was. ``mkdir`` (not ``tempfile.mkdtemp``, which makes 0700 folders) keeps the umask, so a
    shared folder stays readable by the group.
    """
    target = Path(target)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"{target}: exists and is not a folder")
    if target.exists() and not replace:
        raise FileExistsError(f"{target}: already exists; refusing to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(target)
    staging.mkdir()
    try:
        yield staging
        fsync_tree(staging)
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def replace_directory(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; an existing ``dst`` is moved aside first, then deleted.

    ``os.replace`` cannot overwrite a non-empty folder, hence the two renames; the gap between
    them is the only moment ``dst`` is absent.
    """
    old = dst.with_name(f"{OLD_PREFIX}{dst.name}")
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_dir(dst.parent)
    shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the ``.tmp-*`` and ``.old-*`` leftovers of interrupted writes directly in ``folder``.

    Call it only where no other process is writing into ``folder`` at the same time.

    Returns:
        The paths removed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if path.name.startswith((TMP_PREFIX, OLD_PREFIX)):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success fsync it and rename it to ``target``."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling(target)
    try:
        yield staging
        with open(staging, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(staging, target)
        fsync_dir(target.parent)
    finally:
        staging.unlink(missing_ok=True)


def write_json(path: str | Path, payload: Any, *, indent: int | None = 2) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (``default=str`` for paths and such)."""
    with atomic_file(path) as staging:
        staging.write_text(json.dumps(payload, indent=indent, default=str) + "\n", encoding="utf-8")


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` (and the folders) to disk so a rename publishes whole data."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def digest_json(payload: Any) -> str:
    """sha256 hex of ``payload`` as canonical JSON (sorted keys; ``str`` for other objects)."""
    canonical = json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def digest_path(path: str | Path) -> str:
    """sha256 hex of a file's bytes, or of every file (relative name and bytes) in a folder."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def shared_storage_once(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``state_dict`` with each shared storage (tied weights) kept under its first key only.

    safetensors refuses tensors that share memory, and its ``save_model`` takes a module, not
    a state dict gathered elsewhere; :func:`load_weights` accepts whichever key was kept.
    """
    kept, seen = {}, set()
    for key, tensor in state_dict.items():
        pointer = (
            (tensor.device, tensor.data_ptr(), tuple(tensor.shape)) if tensor.numel() else None
        )
        if pointer is not None and pointer in seen:
            continue
        if pointer is not None:
            seen.add(pointer)
        kept[key] = tensor.detach().contiguous()
    return kept


def load_weights(
    model: Any, path: str | Path, *, strict: bool = True
) -> tuple[list[str], list[str]]:
    """Load safetensors weights from ``path`` into ``model``, tie-aware.

    Args:
        model: an ``nn.Module``.
        path: a ``.safetensors`` file, or a folder holding ``model.safetensors`` or a sharded
            ``model.safetensors.index.json``.
        strict: raise on any key that is neither loaded nor tied to a loaded tensor, and on any
            unexpected key; with ``False`` those are returned instead (e.g. a checkpoint of the
            trainable parameters only).

    Returns:
        ``(missing, unexpected)`` key lists (empty when ``strict``).

    Raises:
        FileNotFoundError: no weights at ``path``.
        ValueError: naming the file and the first mismatching keys.
    """
    import safetensors.torch

    path = Path(path)
    if path.is_dir():
        index = path / WEIGHTS_INDEX_NAME
        if index.is_file():
            return _load_sharded(model, path, index, strict)
        path = path / WEIGHTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no safetensors weights here")
    # safetensors' own loader knows which keys a tied (shared-storage) tensor left out on save.
    missing, unexpected = safetensors.torch.load_model(model, path, strict=False)
    return _checked(path, sorted(missing), sorted(unexpected), strict)


def _load_sharded(
    model: Any, folder: Path, index: Path, strict: bool
) -> tuple[list[str], list[str]]:
    import safetensors.torch

    files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    state_dict: dict[str, Any] = {}
    for name in files:
        state_dict.update(safetensors.torch.load_file(folder / name))
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    current = model.state_dict()
    loaded_storage = {current[k].data_ptr() for k in state_dict if k in current}
    untied = [k for k in missing if current[k].data_ptr() not in loaded_storage]
    return _checked(index, sorted(untied), sorted(unexpected), strict)


def _checked(source: Path, missing: list[str], unexpected: list[str], strict: bool):
    if strict and (missing or unexpected):
        raise ValueError(
            f"{source}: weights do not match the model: missing keys {missing[:5]}"
            f"{' ...' if len(missing) > 5 else ''}, unexpected keys {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}"
        )
    return missing, unexpected
