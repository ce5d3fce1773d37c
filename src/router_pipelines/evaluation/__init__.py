"""Evaluation for every model family: metrics, sweeps over settings, speed and Pareto fronts.

- :mod:`.language_modeling`: loss, perplexity, bits per byte and next-token accuracy.
- :mod:`.settings`: the :class:`Setting` protocol a family implements for its operating points.
- :mod:`.sweep`: :func:`evaluate_settings` and the generic :class:`SweepConfig`.
- :mod:`.speed`: prefill and KV-cache decode throughput.
- :mod:`.pareto`: non-dominated rows and their plots.

Nothing here imports a family: a family's settings come in as objects.
"""

from router_pipelines.evaluation.language_modeling import evaluate_language_model
from router_pipelines.evaluation.pareto import pareto_front, plot_fronts, plot_pareto
from router_pipelines.evaluation.settings import ModelAsIs, Setting, TimedModel
from router_pipelines.evaluation.speed import measure_throughput
from router_pipelines.evaluation.sweep import SpeedConfig, SweepConfig, evaluate_settings

__all__ = [
    "ModelAsIs",
    "Setting",
    "SpeedConfig",
    "SweepConfig",
    "TimedModel",
    "evaluate_language_model",
    "evaluate_settings",
    "measure_throughput",
    "pareto_front",
    "plot_fronts",
    "plot_pareto",
]
