"""Model families: what each brings to the shared engine and to the evaluation sweep.

A family is a subpackage (``families.switchable``, ...) with its switching or routing
schedule, its loss functions for the training engine and its sweep settings for
``router_pipelines.evaluation.evaluate_settings``. Nothing here is imported eagerly, so using
one family never imports another.
"""
