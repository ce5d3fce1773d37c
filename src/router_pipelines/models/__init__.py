"""Plain-PyTorch models: quantizers and precision-switchable LMs (never imports Kedro)."""

from router_pipelines.lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "LsqQuantizer": "quantization",
        "MultiWidthQuantizer": "quantization",
        "NestedQuantizer": "quantization",
        "QuantEmbedding": "quant_modules",
        "QuantLinear": "quant_modules",
        "SwitchableConfig": "switchable",
        "SwitchableLM": "switchable",
        "make_switchable": "switchable",
        "quant_range": "quantization",
    },
)
