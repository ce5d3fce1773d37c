"""The switchable-precision family: one model that runs at several bit widths.

- :mod:`.schedules`: which width trains at each step (:class:`SwitchingConfig`).
- :mod:`.loss`: the training loss with distillation, and the eval loss, for the shared engine.
- :mod:`.settings`: bit configurations as sweep settings (:class:`BitEvalConfig`,
  :func:`build_bit_settings`), evaluated by ``router_pipelines.evaluation.evaluate_settings``.
- :mod:`.bits`: effective bits, storage and compression (the settings' cost columns).

The model itself is plain PyTorch in :mod:`router_pipelines.models.switchable`.
"""

from router_pipelines.families.switchable.bits import bit_report
from router_pipelines.families.switchable.loss import (
    DistillConfig,
    SoftTargets,
    distillation_kl,
    make_eval_loss,
    make_switchable_loss,
    soft_targets,
)
from router_pipelines.families.switchable.schedules import (
    STRATEGIES,
    SwitchingConfig,
    bit_widths_for_step,
    lr_multiplier_fn,
    width_step_counts,
)
from router_pipelines.families.switchable.settings import (
    BitEvalConfig,
    BitSetting,
    PackedSpeedConfig,
    build_bit_settings,
    build_configurations,
    check_widths,
)

__all__ = [
    "STRATEGIES",
    "BitEvalConfig",
    "BitSetting",
    "DistillConfig",
    "PackedSpeedConfig",
    "SoftTargets",
    "SwitchingConfig",
    "bit_report",
    "bit_widths_for_step",
    "build_bit_settings",
    "build_configurations",
    "check_widths",
    "distillation_kl",
    "lr_multiplier_fn",
    "make_eval_loss",
    "make_switchable_loss",
    "soft_targets",
    "width_step_counts",
]
