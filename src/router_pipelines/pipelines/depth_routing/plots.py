"""The router-statistics figure of a depth-routing run: how routing evolved over training.

DTF: the mean S_CE and S_CU (expected / unexpected surprise gates) over the Dynamic layers;
both: the predictor's accuracy on top-k membership and the share of tokens computed. Drawn
from the engine's history (``train_s_ce``, ``train_s_cu``, ``train_predictor_accuracy``,
``train_routed_share``; ``eval_`` points where evaluations logged them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

PANELS = (
    ("surprise gates (mean over Dynamic layers)", "gate value", ("s_ce", "s_cu")),
    ("causal predictor vs top-k membership", "accuracy", ("predictor_accuracy",)),
    ("tokens computed by routed blocks", "share of tokens", ("routed_share",)),
)
LABELS = {
    "s_ce": "S_CE (expected)",
    "s_cu": "S_CU (unexpected)",
    "predictor_accuracy": "predictor accuracy",
    "routed_share": "routed share",
}


def routing_history_figure(history: Mapping[str, Sequence[Sequence[float]]], title: str) -> Any:
    """One panel per statistic the history holds (the gate panel only for DTF), train curves
    and eval points, against the optimizer step. A bare matplotlib ``Figure`` (Agg, not
    registered with pyplot) for the catalog's plot dataset."""
    from matplotlib.figure import Figure

    panels = [
        panel for panel in PANELS if any(history.get(f"train_{key}") for key in panel[2])
    ] or [PANELS[-1]]
    figure = Figure(figsize=(7, 2.6 * len(panels) + 0.6))
    axes = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axis, (name, ylabel, keys) in zip(axes, panels, strict=True):
        for number, key in enumerate(keys):
            color = f"C{number}"  # a statistic's train curve and eval points share a colour
            for prefix, style in (("train_", {}), ("eval_", {"marker": "o", "linestyle": ":"})):
                points = history.get(prefix + key) or []
                if points:
                    steps, values = zip(*[(p[0], p[1]) for p in points], strict=True)
                    label = f"{LABELS[key]}, {prefix.rstrip('_')}"
                    axis.plot(steps, values, label=label, color=color, **style)
        axis.set_title(name, fontsize=10)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(loc="best", fontsize=8)
        else:
            axis.text(0.5, 0.5, "not logged", ha="center", va="center", transform=axis.transAxes)
    axes[-1].set_xlabel("optimizer step")
    figure.suptitle(f"router statistics over training: {title}")
    figure.tight_layout()
    return figure
