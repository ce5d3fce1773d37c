"""Making a causal LM precision-switchable: the config and the module swap.

``make_switchable`` replaces, in place, every ``nn.Linear`` and GPT-2 ``Conv1D`` of a
transformers causal LM (except the LM head, unless asked) by a :class:`QuantLinear` holding
the same weights and one quantizer per bit width, and, if asked, every ``nn.Embedding`` by a
:class:`QuantEmbedding`. The precision control lives in
:class:`~router_pipelines.models.switchable.SwitchableLM`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from transformers.pytorch_utils import Conv1D

from router_pipelines.config import check_bool, check_choice
from router_pipelines.models.quant_modules import QuantEmbedding, QuantLinear
from router_pipelines.models.quantization import (
    STEP_INITS,
    MultiWidthQuantizer,
    NestedQuantizer,
    check_bit_width,
)


@dataclass
class SwitchableConfig:
    """How a causal LM is made precision-switchable.

    ``act_bits`` is the activation policy: an int N quantizes every QuantLinear input to N
    bits whatever the weight width (default 8: the seed's "symmetric quantization for
    weights and activations" without letting 2-bit activations wreck the 2-bit model),
    ``"same"`` uses the weight width, ``None`` keeps activations in full precision.
    Activation steps are kept per activation width, so under a fixed N every weight width
    shares that one step (at 8 bits clipping is mild, so sharing costs little).
    """

    bit_widths: list[int] = field(default_factory=lambda: [2, 4, 8])  # weight widths, 2..8
    act_bits: int | str | None = 8  # int 2..8 (fixed), "same" (= weight bits) or None (FP)
    nested: bool = False  # Matryoshka: one shared int8 grid per layer serves every width
    per_channel: bool = True  # one weight step per output channel, else one per layer
    step_init: str = "mse"  # step-size init from data: "mse", "lsq" or "max"
    quantize_lm_head: bool = False  # also swap the LM head (tied weights stay tied)
    quantize_embeddings: bool = False  # also quantize every nn.Embedding table, per row

    def __post_init__(self) -> None:
        if not isinstance(self.bit_widths, list | tuple) or not self.bit_widths:
            raise ValueError(
                f"bit_widths: expected a non-empty list of widths from 2 to 8, got {self.bit_widths!r}"
            )
        self.bit_widths = [check_bit_width("bit_widths", b) for b in self.bit_widths]
        if len(set(self.bit_widths)) != len(self.bit_widths):
            raise ValueError(f"bit_widths: {self.bit_widths} repeats a width; list each once")
        if self.act_bits != "same" and self.act_bits is not None:
            try:
                check_bit_width("act_bits", self.act_bits)
            except ValueError:
                raise ValueError(
                    f"act_bits: {self.act_bits!r} is not allowed; use an int from 2 to 8, "
                    "'same' (follow the weight width) or None (full-precision activations)"
                ) from None
        check_choice("step_init", self.step_init, STEP_INITS)
        for name in ("nested", "per_channel", "quantize_lm_head", "quantize_embeddings"):
            check_bool(name, getattr(self, name))
        if self.nested and not self.per_channel:
            raise ValueError("per_channel: nested codes need per-channel steps; set it to true")

    @property
    def act_bit_widths(self) -> list[int]:
        """Activation widths that get quantizers under the ``act_bits`` policy."""
        if self.act_bits == "same":
            return sorted(self.bit_widths)
        return [] if self.act_bits is None else [self.act_bits]

    def act_bits_for(self, weight_bits: int | None) -> int | None:
        """Activation width the policy pairs with ``weight_bits`` (FP weights: FP)."""
        if weight_bits is None:
            return None
        return weight_bits if self.act_bits == "same" else self.act_bits


def make_switchable(model: nn.Module, config: SwitchableConfig) -> list[str]:
    """Swap, in place, the layers of ``model`` for quantized ones (new layers start at FP).

    Every ``nn.Linear`` / ``Conv1D`` becomes a :class:`QuantLinear`, except the LM head
    (``model.get_output_embeddings()``) unless ``config.quantize_lm_head``. With
    ``config.quantize_embeddings`` every ``nn.Embedding`` (token and learned position
    embeddings) becomes a :class:`QuantEmbedding` with one step per row.

    Tied weights stay tied. When the token embedding and the LM head share one matrix
    (``tie_word_embeddings``, e.g. GPT-2) they also share one weight quantizer, so a single
    table of codes and scales serves both, and the two flags must then agree: quantizing one
    of them alone would need a full-precision and a quantized copy of the same matrix.

    Returns:
        The qualified names of the swapped modules, in module order.

    Raises:
        ValueError: if ``model`` has no layer to swap (e.g. it is already switchable), or the
            flags disagree on a tied embedding / LM head. Nothing is swapped then.
    """
    check_tied_flags(model, config)
    head = _call_if_present(model, "get_output_embeddings")
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if (
            isinstance(module, nn.Linear | Conv1D)
            and (config.quantize_lm_head or module is not head)
        )
        or (isinstance(module, nn.Embedding) and config.quantize_embeddings)
    ]
    if not any(isinstance(module, nn.Linear | Conv1D) for _, module in targets):
        raise ValueError(
            f"model: {type(model).__name__} has no nn.Linear or Conv1D layer to swap "
            "(is it already switchable?)"
        )
    quantizers_by_weight: dict[int, nn.Module] = {}  # id(weight) -> its weight quantizer
    swaps = []  # every new module is built before the first one goes in: all or nothing
    for name, module in targets:
        channels = module.nf if isinstance(module, Conv1D) else module.weight.shape[0]
        weight_quantizer = quantizers_by_weight.get(id(module.weight))
        if weight_quantizer is None:
            weight_quantizer = _weight_quantizer(config, channels)
            quantizers_by_weight[id(module.weight)] = weight_quantizer
        if isinstance(module, nn.Embedding):
            swapped = QuantEmbedding.from_module(module, weight_quantizer)
        else:
            act_quantizer = MultiWidthQuantizer(
                config.act_bit_widths, per_channel=False, init=config.step_init
            )
            swapped = QuantLinear.from_module(module, weight_quantizer, act_quantizer)
        swaps.append((name, swapped))
    for name, swapped in swaps:
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, swapped)
    return [name for name, _ in targets]


def check_tied_flags(model: nn.Module, config: SwitchableConfig) -> None:
    """Raise if ``model`` ties its token embedding to its LM head and ``config`` quantizes
    only one of them (works on a ``meta``-device model, so it costs nothing to call early).

    Raises:
        TypeError: ``config`` is not a :class:`SwitchableConfig`.
        ValueError: naming both flags and what to set.
    """
    if not isinstance(config, SwitchableConfig):
        raise TypeError(f"config: expected SwitchableConfig, got {type(config).__name__}")
    head = _call_if_present(model, "get_output_embeddings")
    embedding = _call_if_present(model, "get_input_embeddings")
    tied = (
        isinstance(head, nn.Linear)
        and isinstance(embedding, nn.Embedding)
        and head.weight is embedding.weight
    )
    if tied and config.quantize_lm_head != config.quantize_embeddings:
        raise ValueError(
            f"quantize_lm_head ({config.quantize_lm_head}) and quantize_embeddings "
            f"({config.quantize_embeddings}): {type(model).__name__} ties its token embedding to "
            "its LM head (tie_word_embeddings), one matrix for both; set both flags to true "
            "(one quantized table serves both) or both to false"
        )


def _weight_quantizer(config: SwitchableConfig, channels: int) -> nn.Module:
    """A fresh per-row (per output channel) weight quantizer for ``config``'s widths."""
    if config.nested:
        return NestedQuantizer(config.bit_widths, channels)
    return MultiWidthQuantizer(config.bit_widths, config.per_channel, channels, config.step_init)


def _call_if_present(model: nn.Module, method: str) -> nn.Module | None:
    getter = getattr(model, method, None)
    try:
        return getter() if callable(getter) else None
    except NotImplementedError:  # PreTrainedModel without that embedding
        return None
