"""Evaluation for every model family: metrics, sweeps over settings, speed and Pareto fronts.

- :mod:`.language_modeling`: loss, perplexity, bits per byte and next-token accuracy.
- :mod:`.settings`: the :class:`Setting` protocol a family implements for its operating points.
- :mod:`.sweep`: :func:`evaluate_settings` and the generic :class:`SweepConfig`.
- :mod:`.speed`: prefill and KV-cache decode throughput.
- :mod:`.pareto`: non-dominated rows and their plots.

Nothing here imports a family: a family's settings come in as objects.
"""

from router_pipelines.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "ModelAsIs": "settings",
        "Setting": "settings",
        "SpeedConfig": "sweep",
        "SweepConfig": "sweep",
        "TimedModel": "settings",
        "evaluate_language_model": "language_modeling",
        "evaluate_settings": "sweep",
        "measure_throughput": "speed",
        "pareto_front": "pareto",
        "plot_fronts": "pareto",
        "plot_pareto": "pareto",
    },
)
