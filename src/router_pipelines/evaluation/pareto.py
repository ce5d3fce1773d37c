"""Pareto fronts over evaluated settings (any family's sweep rows), and their plots."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

# A bare Figure (no pyplot) renders with Agg and needs no display nor global backend switch.
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DIRECTIONS = ("min", "max")


def pareto_front(df: pd.DataFrame, objectives: dict[str, str]) -> pd.Series:
    """Which rows are non-dominated under ``objectives``.

    Row ``a`` dominates row ``b`` when ``a`` is at least as good on every objective and strictly
    better on one. Rows equal on every objective do not dominate each other, so ties are all on
    the front. A row with NaN in any objective is never on the front and dominates nothing.

    Args:
        df: one row per configuration.
        objectives: column -> ``"min"`` or ``"max"``, e.g.
            ``{"perplexity": "min", "effective_bits": "min"}``.

    Returns:
        Boolean Series on ``df.index``, True for the non-dominated rows.
    """
    if not objectives:
        raise ValueError("objectives: give at least one column -> 'min' | 'max'")
    for column, direction in objectives.items():
        if column not in df.columns:
            raise ValueError(f"objectives: column {column!r} is not in {list(df.columns)}")
        if direction not in DIRECTIONS:
            raise ValueError(
                f"objectives.{column}: {direction!r} is not allowed; choose one of {list(DIRECTIONS)}"
            )
    signs = np.array([1.0 if objectives[c] == "min" else -1.0 for c in objectives])
    costs = df[list(objectives)].to_numpy(dtype=float) * signs  # (N, K), lower is better
    valid = ~np.isnan(costs).any(axis=1)
    on_front = valid.copy()
    for i in np.flatnonzero(valid):
        others = costs[valid]
        dominated = (others <= costs[i]).all(axis=1) & (others < costs[i]).any(axis=1)
        on_front[i] = not dominated.any()
    return pd.Series(on_front, index=df.index, name="pareto")


def plot_pareto(
    df: pd.DataFrame,
    x: str,
    y: str,
    front_mask: pd.Series,
    title: str,
    label: str = "name",
    axes: Axes | None = None,
) -> Figure:
    """Scatter of all configurations with the front connected and labelled.

    Args:
        df: one row per configuration with columns ``x``, ``y`` and ``label``.
        x: column on the x axis.
        y: column on the y axis.
        front_mask: boolean Series on ``df.index`` (from :func:`pareto_front`).
        title: axes title.
        label: column whose values label the front points.
        axes: draw into these axes (e.g. one panel of a larger figure) instead of a new figure.

    Returns:
        The matplotlib ``Figure`` drawn into (a new one is not registered with pyplot, so
        nothing leaks between calls).
    """
    for column in (x, y, label):
        if column not in df.columns:
            raise ValueError(f"plot_pareto: column {column!r} is not in {list(df.columns)}")
    front_mask = front_mask.reindex(df.index, fill_value=False).astype(bool)
    if axes is None:
        axes = Figure(figsize=(6, 4.5)).add_subplot()
    figure = axes.figure
    rest = df[~front_mask]
    axes.scatter(rest[x], rest[y], color="0.6", label="dominated")
    front = df[front_mask].sort_values(x)
    axes.plot(front[x], front[y], "o-", color="C0", label="Pareto front")
    for _, row in front.iterrows():
        axes.annotate(
            str(row[label]), (row[x], row[y]), textcoords="offset points", xytext=(4, 4), fontsize=8
        )
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(title)
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def plot_fronts(
    df: pd.DataFrame,
    fronts: Mapping[str, Mapping[str, str]],
    label: str = "name",
    panel_size: tuple[float, float] = (6.0, 4.5),
) -> Figure:
    """One panel per front, side by side: all rows, the front connected and labelled.

    Args:
        df: one row per setting.
        fronts: front name -> its two objectives ``{y_column: dir, x_column: dir}`` (the first
            is drawn on the y axis), e.g. ``{"pareto_bits": {"perplexity": "min",
            "effective_bits": "min"}}``. A boolean column named like the front is used as its
            mask; otherwise the front is computed with :func:`pareto_front`.
        label: column whose values label the front points.
        panel_size: inches per panel.

    Returns:
        A new matplotlib ``Figure`` (not registered with pyplot).
    """
    if not fronts:
        raise ValueError("fronts: give at least one front name -> {y: dir, x: dir}")
    for name, objectives in fronts.items():
        if len(objectives) != 2:
            raise ValueError(
                f"fronts.{name}: a plotted front needs exactly two objectives, got {dict(objectives)}"
            )
    width, height = panel_size
    figure = Figure(figsize=(width * len(fronts), height))
    for index, (name, objectives) in enumerate(fronts.items()):
        y, x = list(objectives)
        mask = df[name].astype(bool) if name in df.columns else pareto_front(df, dict(objectives))
        plot_pareto(
            df,
            x,
            y,
            mask,
            f"{y} vs {x}",
            label=label,
            axes=figure.add_subplot(1, len(fronts), index + 1),
        )
    return figure
