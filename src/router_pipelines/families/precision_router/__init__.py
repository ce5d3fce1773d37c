"""What the precision-router family (seed 000) brings: its loss, static allocators, budget
calibration and evaluation settings."""

from router_pipelines.families.precision_router.allocation import (
    allocate_exact,
    allocate_greedy,
    allocate_searched,
    calibrate_price,
    calibration_loss,
    fisher_sensitivities,
    layer_sensitivities,
    mean_bits,
    random_assignments,
    realised_bits,
    spending_assignments,
)
from router_pipelines.families.precision_router.loss import (
    RouterLossConfig,
    make_router_loss,
    precision_loss,
)
from router_pipelines.families.precision_router.settings import (
    RouterAtBudget,
    RouterEvalConfig,
    StaticWidths,
)

__all__ = [
    "RouterAtBudget",
    "RouterEvalConfig",
    "RouterLossConfig",
    "StaticWidths",
    "allocate_exact",
    "allocate_greedy",
    "allocate_searched",
    "calibrate_price",
    "calibration_loss",
    "fisher_sensitivities",
    "layer_sensitivities",
    "make_router_loss",
    "mean_bits",
    "precision_loss",
    "random_assignments",
    "realised_bits",
    "spending_assignments",
]
