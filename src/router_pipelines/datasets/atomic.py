"""kedro-datasets' JSON, Parquet and Matplotlib datasets, writing local files atomically.

The stock datasets open the target file and write into it, so a run that fails or is killed
mid-save leaves a truncated report where the previous one was. These subclasses write the same
bytes into a temporary sibling and ``os.replace`` it into place
(:func:`router_pipelines.storage.atomic_file`): the file is either the previous one or the
complete new one. Remote file systems (``s3://``, ...) publish whole objects on their own and keep
the stock behaviour.

Each class overrides only ``save`` (loading is inherited), so kedro-mlflow's
``MlflowArtifactDataset`` still wraps them: it calls this ``save`` and then logs the file at
``_get_save_path()``::

    report:
      type: kedro_mlflow.io.artifacts.MlflowArtifactDataset
      dataset:
        type: router_pipelines.datasets.AtomicJSONDataset
        filepath: data/08_reporting/report.json
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from kedro.io.core import DatasetError, get_filepath_str
from kedro_datasets._utils import validate_sub_path  # what the stock dataset checks
from kedro_datasets.json import JSONDataset
from kedro_datasets.matplotlib import MatplotlibDataset
from kedro_datasets.pandas import ParquetDataset

from router_pipelines.storage import atomic_directory, atomic_file


@contextlib.contextmanager
def _open_for_save(dataset: Any, path: PurePosixPath) -> Iterator[IO]:
    """``dataset._fs.open(path)`` for writing, through a temporary file when it is local."""
    target = get_filepath_str(path, dataset._protocol)
    if dataset._protocol != "file":
        with dataset._fs.open(target, **dataset._fs_open_args_save) as handle:
            yield handle
        return
    with (
        atomic_file(target) as staging,
        dataset._fs.open(str(staging), **dataset._fs_open_args_save) as handle,
    ):
        yield handle


class AtomicJSONDataset(JSONDataset):
    """``json.JSONDataset`` whose local saves are atomic (same arguments)."""

    def save(self, data: Any) -> None:
        with _open_for_save(self, self._get_save_path()) as handle:
            json.dump(data, handle, **self._save_args)
        self._invalidate_cache()


class AtomicParquetDataset(ParquetDataset):
    """``pandas.ParquetDataset`` whose local saves are atomic (same arguments)."""

    def save(self, data: Any) -> None:
        save_path = self._get_save_path()
        if Path(get_filepath_str(save_path, self._protocol)).is_dir():
            raise DatasetError(f"Saving {type(self).__name__} to a directory is not supported.")
        if "partition_cols" in self._save_args:
            raise DatasetError(
                f"{type(self).__name__} does not support save argument 'partition_cols'; "
                "use kedro.io.PartitionedDataset instead"
            )
        with _open_for_save(self, save_path) as handle:
            data.to_parquet(handle, **self._save_args)
        self._invalidate_cache()


class AtomicMatplotlibDataset(MatplotlibDataset):
    """``matplotlib.MatplotlibDataset`` whose local saves are atomic (same arguments).

    A figure, or a list / dict of figures (a folder of plots, published whole when
    ``overwrite`` is set). The saved figures are closed afterwards, and only those: the stock
    dataset closes every open figure.
    """

    def save(self, data: Any) -> None:
        save_path = self._get_save_path()
        figures = _named_figures(data, str(save_path))
        try:
            if figures is None:
                with _open_for_save(self, save_path) as handle:
                    handle.write(self._rendered(data))
            elif self._protocol == "file" and self._overwrite:
                target = Path(get_filepath_str(save_path, self._protocol))
                with atomic_directory(target) as staging:
                    for name, figure in figures.items():
                        (staging / name).parent.mkdir(parents=True, exist_ok=True)
                        (staging / name).write_bytes(self._rendered(figure))
            else:  # add to (or write into) the folder, one atomic file per figure
                if self._overwrite and self._exists():
                    self._fs.rm(get_filepath_str(save_path, self._protocol), recursive=True)
                for name, figure in figures.items():
                    with _open_for_save(self, save_path / name) as handle:
                        handle.write(self._rendered(figure))
        finally:
            _close(data)
        self._invalidate_cache()

    def _rendered(self, figure: Any) -> bytes:
        buffer = io.BytesIO()
        figure.savefig(buffer, **self._save_args)
        return buffer.getvalue()


def _named_figures(data: Any, save_path: str) -> dict[str, Any] | None:
    """``{file name: figure}`` for a list (``0.png``, ...) or dict of figures; None for one."""
    if isinstance(data, list):
        return {f"{index}.png": figure for index, figure in enumerate(data)}
    if isinstance(data, dict):
        for name in data:
            validate_sub_path(name, save_path)
        return dict(data)
    return None


def _close(data: Any) -> None:
    import matplotlib.pyplot as plt

    figures = (
        data.values() if isinstance(data, dict) else data if isinstance(data, list) else [data]
    )
    for figure in figures:
        plt.close(figure)
