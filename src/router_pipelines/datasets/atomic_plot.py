"""``matplotlib.MatplotlibDataset`` with atomic local saves (see :mod:`.atomic`).

In a module of its own so that a catalog reading only JSON or parquet reports does not import
matplotlib's pyplot (half a second of every ``kedro run``).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from kedro.io.core import get_filepath_str
from kedro_datasets._utils import validate_sub_path  # what the stock dataset checks
from kedro_datasets.matplotlib import MatplotlibDataset

from router_pipelines.datasets.atomic import open_for_save
from router_pipelines.storage import atomic_directory


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
                with open_for_save(self, save_path) as handle:
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
                    with open_for_save(self, save_path / name) as handle:
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
