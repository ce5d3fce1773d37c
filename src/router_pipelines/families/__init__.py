"""Model families: what each brings to the shared training engine (switching + loss)."""

from router_pipelines.families.switchable import (
    STRATEGIES,
    DistillConfig,
    SwitchingConfig,
    bit_widths_for_step,
    distillation_kl,
    lr_multiplier_fn,
    make_eval_loss,
    make_switchable_loss,
    width_step_counts,
)

__all__ = [
    "STRATEGIES",
    "DistillConfig",
    "SwitchingConfig",
    "bit_widths_for_step",
    "distillation_kl",
    "lr_multiplier_fn",
    "make_eval_loss",
    "make_switchable_loss",
    "width_step_counts",
]
