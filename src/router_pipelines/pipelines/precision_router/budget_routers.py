"""A router per budget, started at the best static assignment (``evaluation.budget_routers``).

The trained router learns one trade-off and is moved along it by the price; at a given
budget it starts from nothing the static allocator knows. A budget router starts *at* the
exact static allocation for its budget (:meth:`LayerwiseQuantizeForCausalLM.init_static`: the
hard choice is that allocation for every input), then trains on the router's training rows
through the shared engine with the target penalty ``target_weight · (mean_bits − budget)²``,
so it moves away from the static widths only where the inputs pay for it. Its price is then
calibrated on the calibration rows like the trained router's.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from dataclasses import replace
from typing import Any

logger = logging.getLogger(__name__)


def train_budget_router(
    router: Any,
    static_widths: list[int],
    budget: float,
    train_rows: Any,
    training: Any,
    config: Any,
) -> dict[str, Any]:
    """The routers' weights of a copy of ``router`` started at ``static_widths`` and trained
    for ``config.budget_router_steps`` steps at ``target_bits = budget`` (the frozen model is
    not changed: the copy's routers are the only trainable parameters).

    Args:
        router: the trained :class:`LayerwiseQuantizeForCausalLM` (not changed).
        static_widths: the exact static allocation for ``budget``, one width per block.
        train_rows: the router's training rows (a dataset of token rows).
        training: the parsed ``precision_router.training`` (batch size, loss weights, engine).
        config: the parsed ``precision_router.evaluation``.
    """
    from router_pipelines.families.precision_router import make_router_loss
    from router_pipelines.training import Trainer
    from router_pipelines.training.config import NOTHING_SAVED

    candidate = copy.deepcopy(router)
    candidate.init_static(static_widths, config.static_init_margin)
    steps = config.budget_router_steps
    loss = replace(training.loss, target_bits=float(budget))
    with tempfile.TemporaryDirectory(prefix="budget-router-") as scratch:
        engine = replace(
            training.engine_config(),
            output_dir=scratch,
            max_steps=steps,
            learning_rate=config.budget_router_learning_rate,
            warmup_steps=min(training.warmup_steps, max(steps // 10, 0)),
            **NOTHING_SAVED,
        )
        result = Trainer(candidate, make_router_loss(loss), train_rows, config=engine).train()
    trained = getattr(result.model, "module", result.model)
    logger.info(
        "budget router at %.2g bits: %d steps from the static widths %s",
        budget,
        steps,
        static_widths,
    )
    return {k: v.detach().cpu().clone() for k, v in trained.routers.state_dict().items()}


def static_start(router: Any, static_widths: list[int], margin: float) -> tuple[dict, float]:
    """The routers' weights of a budget router before training (``init_static``: the hard
    choice is ``static_widths`` for every input) and the mean bits that allocation costs."""
    from router_pipelines.families.precision_router.allocation import mean_bits

    # On the router itself, its weights restored afterwards: a deepcopy would copy the frozen
    # quantized LM too, only to read a few router layers.
    with router.routers_swapped(router.routers.state_dict()):
        router.init_static(static_widths, margin)
        state = {k: v.detach().cpu().clone() for k, v in router.routers.state_dict().items()}
    params = [int(p) for p in router.layer_params.tolist()]
    return state, float(mean_bits(static_widths, params))
