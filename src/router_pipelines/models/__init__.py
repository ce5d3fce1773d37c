"""Plain-PyTorch models: quantizers and precision-switchable LMs (never imports Kedro)."""

from router_pipelines.models.quant_modules import QuantEmbedding, QuantLinear
from router_pipelines.models.quantization import (
    LsqQuantizer,
    MultiWidthQuantizer,
    NestedQuantizer,
    quant_range,
)
from router_pipelines.models.switchable import (
    SwitchableConfig,
    SwitchableLM,
    make_switchable,
)

__all__ = [
    "LsqQuantizer",
    "MultiWidthQuantizer",
    "NestedQuantizer",
    "QuantEmbedding",
    "QuantLinear",
    "SwitchableConfig",
    "SwitchableLM",
    "make_switchable",
    "quant_range",
]
