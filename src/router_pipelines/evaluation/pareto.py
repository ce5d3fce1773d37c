"""Pareto fronts over evaluated settings (any family's sweep rows), and their plots."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

# A bare Figure (no pyplot) renders with Agg and needs no display nor global backend switch.
from matplotlib.axes import Axes
from matplotlib.figure import Figure

DIRECTIONS = ("min", "max")

# Axis labels, with units, of the sweep columns every family reports (evaluation/sweep.py); any
# other column is shown by its name. A family passes its own labels for its own columns.
AXIS_LABELS = {
    "perplexity": "validation perplexity",
    "loss": "validation loss, nats per token",
    "bits_per_byte": "bits per byte (validation)",
    "token_accuracy": "next-token accuracy",
    "effective_bits": "effective bits per weight",
    "compression_ratio": "compression vs FP16, times",
    "tokens_per_s": "decode speed, tokens/s at batch 1",
    "prefill_tokens_per_s": "prefill speed, tokens/s",
}
# Where a front label may go around its point (points of offset), tried in order until one
# overlaps no label placed before it; the last resort is the first.
LABEL_OFFSETS = ((5, 5), (5, -12), (-5, 5), (-5, -12), (0, 12), (0, -18), (10, 0), (-10, 0))
LABEL_RINGS = (1, 2, 3, 4.5)  # each offset scaled by these, nearest first


def axis_label(column: str, direction: str | None = None) -> str:
    """:data:`AXIS_LABELS` for ``column`` (else its name), plus "lower/higher is better"."""
    text = AXIS_LABELS.get(column, column.replace("_", " "))
    if direction == "min":
        return f"{text} (lower is better)"
    if direction == "max":
        return f"{text} (higher is better)"
    return text


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
    x_label: str | None = None,
    y_label: str | None = None,
) -> Figure:
    """Scatter of all configurations with the front connected and labelled (labels placed so
    that they do not overlap each other, where the axes leave room).

    Args:
        df: one row per configuration with columns ``x``, ``y`` and ``label``.
        x: column on the x axis.
        y: column on the y axis.
        front_mask: boolean Series on ``df.index`` (from :func:`pareto_front`).
        title: axes title.
        label: column whose values label the front points.
        axes: draw into these axes (e.g. one panel of a larger figure) instead of a new figure.
        x_label, y_label: axis labels; default :func:`axis_label` of the column (with units).

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
    axes.set_xlabel(x_label or axis_label(x))
    axes.set_ylabel(y_label or axis_label(y))
    axes.set_title(title)
    axes.legend(loc="best")
    axes.grid(alpha=0.3)
    figure.tight_layout()
    _place_labels(axes, front[x].to_numpy(float), front[y].to_numpy(float), front[label])
    return figure


def _place_labels(axes: Axes, xs: np.ndarray, ys: np.ndarray, labels: pd.Series) -> None:
    """Annotate each point with the first of :data:`LABEL_OFFSETS` whose text box stays inside
    the axes and overlaps no label placed before it nor the legend, and, where there is room, no
    line and no plotted point. Hand-written: matplotlib has no label placement of its own, and
    adjustText (the usual library) moves labels iteratively to *reduce* overlaps, with no
    guarantee and results that depend on its iteration budget; a greedy pass over a few rings
    of candidate positions is deterministic and never overlaps two labels while there is room
    (tested), which is enough for a front of a few dozen points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.text import Text

    figure = axes.figure
    if not isinstance(figure.canvas, FigureCanvasAgg):
        FigureCanvasAgg(figure)  # text extents need a renderer; Agg draws off-screen
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    lines = [line.get_transform().transform_path(line.get_path()) for line in axes.get_lines()]
    points = [
        point
        for collection in axes.collections
        for point in collection.get_offset_transform().transform(collection.get_offsets())
    ]
    points += [axes.transData.transform((x, y)) for x, y in zip(xs, ys, strict=True)]
    legend = axes.get_legend()
    placed = [legend.get_window_extent(renderer)] if legend is not None else []  # keep clear
    for x, y, text in zip(xs, ys, labels.astype(str), strict=True):
        chosen = None
        # Nearest first; beyond the first ring a thin leader line joins label and point. A
        # label that finds no place clear of lines and points may cross them (second pass), but
        # never another label while there is room.
        candidates = [
            (clear, scale, offset)
            for clear in (True, False)
            for scale in LABEL_RINGS
            for offset in LABEL_OFFSETS
        ]
        for clear, scale, (dx, dy) in candidates:
            note = axes.annotate(
                text,
                (x, y),
                textcoords="offset points",
                xytext=(dx * scale, dy * scale),
                ha="left" if dx > 0 else "right" if dx < 0 else "center",
                fontsize=8,
                arrowprops=None if scale == 1 else {"arrowstyle": "-", "color": "0.5", "lw": 0.5},
            )
            note.update_positions(renderer)
            box = Text.get_window_extent(note, renderer)  # the text, without its leader
            padded = box.expanded(1.05, 1.15)
            if (
                frame.contains(box.x0, box.y0)
                and frame.contains(box.x1, box.y1)
                and not any(padded.overlaps(other) for other in placed)
                and not (
                    clear
                    and (
                        any(line.intersects_bbox(padded, filled=False) for line in lines)
                        or any(padded.contains(px, py) for px, py in points)
                    )
                )
            ):
                chosen = (note, box)
                break
            note.remove()
        if chosen is None:  # no room left: the default place, overlapping
            note = axes.annotate(
                text, (x, y), textcoords="offset points", xytext=LABEL_OFFSETS[0], fontsize=8
            )
            chosen = (note, note.get_window_extent(renderer))
        placed.append(chosen[1])


def plot_fronts(
    df: pd.DataFrame,
    fronts: Mapping[str, Mapping[str, str]],
    label: str = "name",
    panel_size: tuple[float, float] = (6.0, 4.5),
    title: str | None = None,
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
        title: the figure's title above the panels (e.g. which model and data).

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
    figure = Figure(figsize=(width * len(fronts), height + (0.4 if title else 0.0)))
    if title:
        figure.suptitle(title)
    panels = figure.subplots(1, len(fronts), squeeze=False)[0]
    for axes, (name, objectives) in zip(panels, fronts.items(), strict=True):
        y, x = list(objectives)
        mask = df[name].astype(bool) if name in df.columns else pareto_front(df, dict(objectives))
        plot_pareto(
            df,
            x,
            y,
            mask,
            f"{AXIS_LABELS.get(y, y)} vs {AXIS_LABELS.get(x, x)}",
            label=label,
            axes=axes,
            x_label=axis_label(x, objectives[x]),
            y_label=axis_label(y, objectives[y]),
        )
    return figure
