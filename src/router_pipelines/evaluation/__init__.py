"""Evaluation of switchable-precision models: metrics, bits, speed, sweeps and Pareto fronts.

- :mod:`.language_modeling`: loss, perplexity and next-token accuracy.
- :mod:`.bits`: effective bits, storage bytes and compression (definitions in its docstring).
- :mod:`.speed`: prefill and KV-cache decode throughput.
- :mod:`.configs`: the bit configurations to sweep and the sweep itself.
- :mod:`.pareto`: non-dominated configurations and their plot.
"""

from router_pipelines.evaluation.bits import bit_report
from router_pipelines.evaluation.configs import (
    BitConfiguration,
    EvalConfig,
    SpeedConfig,
    build_configurations,
    evaluate_configurations,
)
from router_pipelines.evaluation.language_modeling import evaluate_language_model
from router_pipelines.evaluation.pareto import pareto_front, plot_pareto
from router_pipelines.evaluation.speed import measure_throughput

__all__ = [
    "BitConfiguration",
    "EvalConfig",
    "SpeedConfig",
    "bit_report",
    "build_configurations",
    "evaluate_configurations",
    "evaluate_language_model",
    "measure_throughput",
    "pareto_front",
    "plot_pareto",
]
