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
import json
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from kedro.io.core import DatasetError, get_filepath_str
from kedro_datasets.json import JSONDataset
from kedro_datasets.pandas import ParquetDataset

from router_pipelines.storage import atomic_file


@contextlib.contextmanager
def open_for_save(dataset: Any, path: PurePosixPath) -> Iterator[IO]:
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
        with open_for_save(self, self._get_save_path()) as handle:
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
        with open_for_save(self, save_path) as handle:
            data.to_parquet(handle, **self._save_args)
        self._invalidate_cache()
