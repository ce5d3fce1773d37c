"""The switchable-precision family: one model that runs at several bit widths.

- :mod:`.schedules`: which width trains at each step (:class:`SwitchingConfig`).
- :mod:`.loss`: the training loss with distillation, and the eval loss, for the shared engine.
- :mod:`.settings`: bit configurations as sweep settings (:class:`BitEvalConfig`,
  :func:`build_bit_settings`), evaluated by ``router_pipelines.evaluation.evaluate_settings``.
- :mod:`.bits`: effective bits, storage and compression (the settings' cost columns).

The model itself is plain PyTorch in :mod:`router_pipelines.models.switchable`.
"""

from router_pipelines.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "BitEvalConfig": "settings",
        "BitSetting": "settings",
        "DistillConfig": "loss",
        "PackedSpeedConfig": "settings",
        "STRATEGIES": "schedules",
        "SoftTargets": "loss",
        "SwitchingConfig": "schedules",
        "bit_report": "bits",
        "bit_widths_for_step": "schedules",
        "build_bit_settings": "settings",
        "build_configurations": "settings",
        "check_widths": "settings",
        "distillation_kl": "loss",
        "lr_multiplier_fn": "schedules",
        "make_eval_loss": "loss",
        "make_switchable_loss": "loss",
        "soft_targets": "loss",
        "width_step_counts": "schedules",
    },
)
