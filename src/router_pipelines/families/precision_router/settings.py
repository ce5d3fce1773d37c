"""Operating points of a routed multi-precision model as sweep ``Setting``s.

- :class:`StaticWidths`: one width per decoder block, the same for every input (uniform,
  exact or greedy allocation, random), or full precision (``widths`` None).
- :class:`RouterAtBudget`: the router's hard choice at a calibrated price (``router_state``: the
  weights of a router trained for that budget, swapped in while the setting is applied).

Every row gets ``mean_bits`` (the parameter-weighted mean width over the blocks' quantized
linears, realised on the evaluation data for the router), ``budget``, ``layer_bits`` (JSON, the
mean width per block) and ``bit_histogram`` (JSON, per block the share of decisions at each
width). Speed (``evaluation.speed.enabled``) is timed on real kernels: with ``speed.packed``
(the default) each setting's :meth:`timed_model` is a packed copy of the router
(:func:`~router_pipelines.models.precision_router.pack_precision_router`: every block on the
int4 or int8 kernel of the width it runs at, the router's own decisions, weight-only), so its
``speed_kind`` is ``packed``; without ``packed``, or where a width or shape has no kernel, the
fake-quantized model is timed and labelled ``simulated``. Full precision is timed as it is.
"""

from __future__ import annotations

import contextlib
import json
import logging
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from router_pipelines.config import check_bool, check_choice, check_int, check_positive
from router_pipelines.evaluation.settings import TimedModel
from router_pipelines.evaluation.sweep import SweepConfig
from router_pipelines.families.precision_router.allocation import mean_bits
from router_pipelines.families.switchable.bits import bit_report
from router_pipelines.families.switchable.settings import PackedSpeedConfig

BUDGET_SELECTIONS = ("calibration", "none")
PACKED_KIND = "packed"  # speed_kind of a setting timed on real int4 / int8 kernels

logger = logging.getLogger(__name__)
# one packed copy per (router, compute dtype), shared by every setting of an evaluation: packing
# deep-copies the model and packs every linear at each width, too costly to repeat per row
_PACKED: weakref.WeakKeyDictionary[nn.Module, dict[str, nn.Module | None]] = (
    weakref.WeakKeyDictionary()
)


@dataclass
class RouterEvalConfig(SweepConfig):
    """What the evaluation compares (batch and speed fields from the sweep)."""

    # speed.packed (default true): time every mix on real packed kernels (module docstring)
    speed: PackedSpeedConfig = field(default_factory=PackedSpeedConfig)
    budgets: list[float] = field(default_factory=lambda: [3.0, 4.0, 5.0, 6.0])
    random_per_budget: int = 2  # random assignments per budget
    seed: int = 0
    calibration_examples: int = 64  # random training rows the router did not train on
    calibration_batch_size: int = 8
    calibration_iterations: int = 12  # bisection steps of the price per budget
    half_bit_static: bool = True  # also the static allocations at budget + 0.5 (gap recovery)
    sensitivity: str = "loss"  # loss (measured loss increase) | fisher (Fisher-weighted error)
    # also the static assignment searched on measured calibration losses (allocate_searched):
    # exhaustive when at most search_exhaustive_limit assignments spend a budget, else a greedy
    # descent on measured losses (up to L * L * (n_widths - 1) evaluations, shared by budgets)
    static_search: bool = True
    search_exhaustive_limit: int = 64
    budget_routers: bool = False  # also a router per budget, started at its best static one
    budget_router_steps: int = 32  # its optimizer steps (target_bits = the budget)
    budget_router_learning_rate: float = 3e-3
    static_init_margin: float = 3.0  # logit margin of the static width at initialisation
    # calibration: a budget router whose calibration loss is not below its static start's
    # keeps the static start (model selection on held-out rows) | none: always the trained one
    budget_router_selection: str = "calibration"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.budgets, list) or not self.budgets:
            raise ValueError(
                f"budgets: expected a non-empty list of mean widths, got {self.budgets!r}"
            )
        for value in self.budgets:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"budgets: {value!r} is not a number of bits")
        self.budgets = [float(b) for b in self.budgets]
        check_int("random_per_budget", self.random_per_budget, minimum=0)
        check_int("seed", self.seed, minimum=0)
        check_int("calibration_examples", self.calibration_examples, minimum=1)
        check_int("calibration_batch_size", self.calibration_batch_size, minimum=1)
        check_int("calibration_iterations", self.calibration_iterations, minimum=1)
        check_choice("sensitivity", self.sensitivity, ("loss", "fisher"))
        check_bool("static_search", self.static_search)
        check_int("search_exhaustive_limit", self.search_exhaustive_limit, minimum=1)
        check_bool("budget_routers", self.budget_routers)
        check_int("budget_router_steps", self.budget_router_steps, minimum=1)
        check_positive("budget_router_learning_rate", self.budget_router_learning_rate)
        check_positive("static_init_margin", self.static_init_margin)
        check_choice("budget_router_selection", self.budget_router_selection, BUDGET_SELECTIONS)


def packed_timed_model(
    name: str,
    model: nn.Module,
    packed_dtype: str | None,
    configure: Callable[[nn.Module], None],
) -> TimedModel | None:
    """The packed copy of the router ``model`` (made once per model and dtype), with the
    routers' current weights (a budget router's are swapped in while its setting is applied)
    and put in its setting's state by ``configure(copy)``; or ``None`` (time ``model`` itself)
    when ``packed_dtype`` is None or a width or layer shape has no kernel (logged)."""
    if packed_dtype is None:
        return None
    from router_pipelines.models.precision_router import pack_precision_router

    copies = _PACKED.setdefault(model, {})
    if packed_dtype not in copies:
        try:
            copies[packed_dtype] = pack_precision_router(model, getattr(torch, packed_dtype))
            copies[packed_dtype].tally = None  # a copy of a tally being filled: record nothing
        except NotImplementedError as err:
            logger.warning("%s: timing fake quantization instead: %s", name, err)
            copies[packed_dtype] = None
    packed = copies[packed_dtype]
    if packed is None:
        return None
    packed.routers.load_state_dict(model.routers.state_dict())
    configure(packed)
    return TimedModel(packed, PACKED_KIND, packed_dtype)


def _check_router(model: nn.Module) -> None:
    if not hasattr(model, "precisions") or not hasattr(model, "routing"):
        raise ValueError(f"model: {type(model).__name__} is not a LayerwiseQuantizeForCausalLM")


@dataclass(frozen=True)
class StaticWidths:
    """The same width per block for every input; ``widths`` None: full precision."""

    name: str
    kind: str  # uniform | static_exact | static_greedy | static_searched | random | fp
    widths: tuple[int, ...] | None
    budget: float | None = None
    speed_kind: str = "simulated"
    packed_dtype: str | None = None  # set: timed on packed kernels (timed_model)

    def validate(self, model: nn.Module) -> None:
        _check_router(model)
        if self.widths is None:
            return
        if len(self.widths) != model.num_layers or any(
            b not in model.precisions for b in self.widths
        ):
            raise ValueError(
                f"widths: {list(self.widths)} is not one of {model.precisions} per block for "
                f"{model.num_layers} blocks"
            )

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        quantized = model.quantized
        saved = quantized.precision_map()
        try:
            with model.routing(None):
                if self.widths is None:
                    quantized.set_precision(None)
                else:
                    quantized.set_precision(max(self.widths))
                    quantized.set_layer_precision(
                        [{"attn_bits": b, "mlp_bits": b} for b in self.widths]
                    )
                yield
        finally:
            quantized.set_precision_map(saved)

    def timed_model(self, model: nn.Module) -> TimedModel | None:
        """The packed router with every block forced to its width (``None`` at full
        precision, or without ``packed_dtype``: time ``model``)."""
        if self.widths is None:
            return None

        def configure(packed: nn.Module) -> None:  # the state routing(forced=...) sets
            packed.mode, packed.forced = "infer", list(self.widths)

        return packed_timed_model(self.name, model, self.packed_dtype, configure)

    def columns(self, model: nn.Module) -> dict[str, Any]:
        params = model.layer_params.tolist()
        if self.widths is None:
            bits, layer_bits, histogram = 16.0, [16.0] * model.num_layers, []
        else:
            bits, layer_bits = mean_bits(self.widths, params), list(map(float, self.widths))
            histogram = [{str(b): float(b == w) for b in model.precisions} for w in self.widths]
        return {
            "mean_bits": bits,
            "budget": self.budget,
            "effective_bits": bit_report(model.quantized)["effective_bits"],
            "layer_bits": json.dumps(layer_bits),
            "bit_histogram": json.dumps(histogram),
            "price": float("nan"),
            "calibration_bits": float("nan"),
        }


@dataclass
class RouterAtBudget:
    """The router's hard choice at ``price`` (calibrated for ``budget``)."""

    name: str
    budget: float
    price: float
    calibration_bits: float
    kind: str = "router"  # router (the trained router) | budget_router (its own weights)
    speed_kind: str = "simulated"
    router_state: dict[str, Any] | None = field(default=None, repr=False)  # routers' weights
    selected: str | None = None  # budget routers: "trained", or "static start" (selection)
    packed_dtype: str | None = None  # set: timed on packed kernels (timed_model)
    _tally: Any = field(default=None, repr=False)

    def validate(self, model: nn.Module) -> None:
        _check_router(model)

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[None]:
        with (
            model.routers_swapped(self.router_state),  # a router trained for this budget
            model.routing("infer", price=self.price),
            model.tallying() as tally,
        ):
            self._tally = tally
            yield

    def timed_model(self, model: nn.Module) -> TimedModel | None:
        """The packed router deciding as this setting does: its routers' weights (read inside
        :meth:`applied`, where they are swapped in) and its price."""

        def configure(packed: nn.Module) -> None:  # the state routing("infer", price) sets
            packed.mode, packed.price, packed.forced = "infer", self.price, None

        return packed_timed_model(self.name, model, self.packed_dtype, configure)

    def columns(self, model: nn.Module) -> dict[str, Any]:
        tally = self._tally
        layer_bits = tally.layer_bits()
        return {
            "mean_bits": tally.mean_bits(),
            "budget": self.budget,
            "effective_bits": float("nan"),
            "layer_bits": json.dumps([round(b, 4) for b in layer_bits]),
            "bit_histogram": json.dumps(tally.histogram()),
            "price": self.price,
            "calibration_bits": self.calibration_bits,
            "selected": self.selected,
        }
