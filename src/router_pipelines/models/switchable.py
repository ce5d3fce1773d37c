"""Precision control of a swapped causal LM: :class:`SwitchableLM`.

:class:`SwitchableLM` wraps a model swapped by :func:`make_switchable` and sets the precision
of all layers at once (``set_precision``) or per block (``set_layer_precision``); ``forward``
is the HF model's, so losses and ``generate`` work unchanged. At full precision the model
computes exactly what the base model computed. The config and the swap are in
:mod:`.switchable_swap`, saving and loading in :mod:`.switchable_io`; this module re-exports
them so ``from router_pipelines.models.switchable import ...`` stays the one import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from router_pipelines.models.layers import LAYER_KEYS, find_decoder_blocks
from router_pipelines.models.quant_modules import QuantEmbedding, QuantLinear
from router_pipelines.models.quantization import check_precision
from router_pipelines.models.switchable_io import (
    SWITCHABLE_CONFIG_NAME,
    load_switchable,
    save_switchable,
)
from router_pipelines.models.switchable_swap import (
    SwitchableConfig,
    check_tied_flags,
    make_switchable,
)

__all__ = [
    "SWITCHABLE_CONFIG_NAME",
    "QuantEmbedding",
    "QuantLinear",
    "SwitchableConfig",
    "SwitchableLM",
    "check_tied_flags",
    "make_switchable",
]

_MLP_NAMES = ("mlp", "feed_forward", "ffn")  # block sub-module names counted as the MLP
_FOLLOW_POLICY = object()  # set_precision default: activation bits from SwitchableConfig.act_bits


class SwitchableLM(nn.Module):
    """A transformers causal LM after :func:`make_switchable`, with precision control.

    Args:
        model: the swapped HF model (see :meth:`from_base` to swap and wrap in one call).
        config: the config it was swapped with.
    """

    def __init__(self, model: PreTrainedModel, config: SwitchableConfig) -> None:
        super().__init__()
        self.model = model
        self.switchable_config = config
        linears = self.quant_linears()
        if not linears:
            raise ValueError(
                "model: has no QuantLinear layer; build it with SwitchableLM.from_base(model, config)"
            )
        blocks_name, blocks = find_decoder_blocks(model)
        self._layer_groups: list[dict[str, list[str]]] = []
        for index in range(len(blocks)):
            prefix = f"{blocks_name}.{index}."
            groups: dict[str, list[str]] = {"attn": [], "mlp": []}
            for name in linears:
                local = name[len(prefix) :] if name.startswith(prefix) else None
                if local is not None and "attn" in local:
                    groups["attn"].append(name)
                elif local is not None and any(key in local for key in _MLP_NAMES):
                    groups["mlp"].append(name)
            self._layer_groups.append(groups)

    @classmethod
    def from_base(cls, model: PreTrainedModel, config: SwitchableConfig) -> SwitchableLM:
        """Swap ``model``'s linears (in place: ``model`` itself is changed, nothing is copied)
        and wrap it. Deep-copy the base model first if you still need it unquantized."""
        make_switchable(model, config)
        return cls(model, config)

    @property
    def config(self) -> PretrainedConfig:
        """The HF model config."""
        return self.model.config

    @property
    def num_layers(self) -> int:
        return len(self._layer_groups)

    def forward(self, precisions: Sequence[int | str | None] | None = None, **kwargs: Any) -> Any:
        """The HF model's forward (e.g. ``input_ids``, ``attention_mask``, ``labels``).

        With ``precisions`` (e.g. ``[8, 4, 2]``) it runs the model once per width, in that
        order, and returns the list of outputs, leaving the model at the last width. One call
        for all widths keeps a DDP-wrapped model at one forward per backward, which DDP needs.
        """
        if precisions is None:
            return self.model(**kwargs)
        outputs = []
        for bits in precisions:
            self.set_precision(bits)
            outputs.append(self.model(**kwargs))
        return outputs

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The HF model's ``generate`` at the current precision."""
        return self.model.generate(*args, **kwargs)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Delegates to the HF model's ``activation_checkpointing_enable`` (transformers 5)."""
        self.model.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(
        self, gradient_checkpointing_kwargs: dict | None = None, **kwargs: Any
    ) -> None:
        """The pre-5 name: calls the HF ``activation_checkpointing_enable`` (no deprecation
        warning); ``gradient_checkpointing_kwargs`` go to ``torch.utils.checkpoint``."""
        self.model.activation_checkpointing_enable(
            activation_checkpointing_kwargs=gradient_checkpointing_kwargs, **kwargs
        )

    def quant_linears(self) -> dict[str, QuantLinear]:
        """Qualified name (inside the HF model) -> QuantLinear."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantLinear)}

    def quant_embeddings(self) -> dict[str, QuantEmbedding]:
        """Qualified name -> QuantEmbedding (empty unless ``quantize_embeddings``)."""
        return {n: m for n, m in self.model.named_modules() if isinstance(m, QuantEmbedding)}

    def quant_modules(self) -> dict[str, QuantLinear | QuantEmbedding]:
        """Every quantized module, linears and embeddings, in module order."""
        return {
            n: m
            for n, m in self.model.named_modules()
            if isinstance(m, QuantLinear | QuantEmbedding)
        }

    def precision_map(self) -> dict[str, tuple[int | None, int | None]]:
        """Qualified name -> ``(weight_bits, act_bits)`` of every quantized module
        (embeddings have no activation quantizer: their ``act_bits`` is always ``None``)."""
        return {n: (m.weight_bits, m.act_bits) for n, m in self.quant_modules().items()}

    def set_precision(self, bits: int | str | None, act_bits: Any = _FOLLOW_POLICY) -> None:
        """Put every quantized module at weight width ``bits`` (``None`` or ``"fp"``: full
        precision).

        ``act_bits`` defaults to the config's policy for ``bits`` (full precision when
        ``bits`` is); pass an int or ``None`` to override. It applies to the QuantLinears.

        Raises:
            ValueError: naming a width the model was not built with, and the allowed ones.
        """
        weight_bits = self._check_weight_bits("bits", bits)
        act = self._check_act_bits("act_bits", weight_bits, act_bits)
        for module in self.quant_modules().values():
            module.set_bits(weight_bits, act if isinstance(module, QuantLinear) else None)

    def set_precision_map(self, precision: Mapping[str, tuple[int | None, int | None]]) -> None:
        """Put every quantized module back at the ``(weight_bits, act_bits)`` of a
        :meth:`precision_map` taken earlier (e.g. before a temporary change).

        Raises:
            ValueError: ``precision`` does not name exactly this model's quantized modules.
        """
        modules = self.quant_modules()
        if set(precision) != set(modules):
            missing = sorted(set(modules) - set(precision))[:3]
            unknown = sorted(set(precision) - set(modules))[:3]
            raise ValueError(
                f"precision: does not match the model's quantized modules (missing {missing}, "
                f"unknown {unknown})"
            )
        for name, module in modules.items():
            module.set_bits(*precision[name])

    @torch.no_grad()
    def initialize_quantizers(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        bit_widths: Sequence[int | None] | None = None,
    ) -> list[int]:
        """Set, from one batch, the steps of every width whose quantizers are not set yet.

        Runs one no-grad, eval-mode forward per such width (default: all the model's widths,
        activation bits from the policy), then restores the previous precisions and mode.
        Under data parallelism call it on every rank: the init averages across ranks.

        Args:
            input_ids, attention_mask: ``(B, T)``.
            bit_widths: the widths to prepare (``None`` entries are skipped).

        Returns:
            The widths that ran a forward.
        """
        saved = self.precision_map()
        modes = [(module, module.training) for module in self.modules()]
        self.eval()
        ran = []
        for bits in self.switchable_config.bit_widths if bit_widths is None else bit_widths:
            if bits is None:
                continue
            self.set_precision(bits)
            if not all(m.is_initialized() for m in self.quant_modules().values()):
                self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
                ran.append(bits)
        self.set_precision_map(saved)
        for module, training in modes:
            module.training = training
        return ran

    def set_layer_precision(self, layer_config: Sequence[Mapping[str, Any]]) -> None:
        """Per-block widths: ``[{"attn_bits": 8, "mlp_bits": 4}, ...]``, one dict per block.

        Activation bits follow the config's policy for each weight width. Quantized modules
        outside the blocks (a quantized LM head, quantized embeddings) keep their current
        precision: call ``set_precision`` first to choose it. The whole list is checked
        before any layer changes.

        Raises:
            ValueError: wrong number of dicts, unknown or missing keys, or a bad width.
        """
        if isinstance(layer_config, Mapping) or not isinstance(layer_config, Sequence):
            raise ValueError(f"layer_config: expected a list of dicts, got {layer_config!r}")
        if len(layer_config) != self.num_layers:
            raise ValueError(
                f"layer_config: expected one dict per transformer block ({self.num_layers} "
                f"layers), got {len(layer_config)}"
            )
        plan: list[tuple[str, int | None, int | None]] = []
        for index, entry in enumerate(layer_config):
            where = f"layer_config[{index}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{where}: expected a dict with keys {list(LAYER_KEYS)}")
            unknown = sorted(set(entry) - set(LAYER_KEYS))
            missing = sorted(set(LAYER_KEYS) - set(entry))
            if unknown or missing:
                raise ValueError(
                    f"{where}: unknown key(s) {unknown}, missing key(s) {missing}; "
                    f"each dict needs exactly {list(LAYER_KEYS)}"
                )
            for key in LAYER_KEYS:
                weight_bits = self._check_weight_bits(f"{where}.{key}", entry[key])
                act = self.switchable_config.act_bits_for(weight_bits)
                group = key.removesuffix("_bits")
                plan.extend((name, weight_bits, act) for name in self._layer_groups[index][group])
        linears = self.quant_linears()
        for name, weight_bits, act in plan:
            linears[name].set_bits(weight_bits, act)

    def _check_weight_bits(self, key: str, bits: Any) -> int | None:
        weight_bits = check_precision(key, bits)
        allowed = sorted(self.switchable_config.bit_widths)
        if weight_bits is not None and weight_bits not in allowed:
            raise ValueError(
                f"{key}: {weight_bits} bits is not a width of this model; allowed widths are "
                f"{allowed}, or None / 'fp' for full precision"
            )
        return weight_bits

    def _check_act_bits(self, key: str, weight_bits: int | None, act_bits: Any) -> int | None:
        if act_bits is _FOLLOW_POLICY:
            return self.switchable_config.act_bits_for(weight_bits)
        act = check_precision(key, act_bits)
        allowed = self.switchable_config.act_bit_widths
        if act is not None and act not in allowed:
            raise ValueError(
                f"{key}: {act} bits has no activation quantizer; allowed are {allowed} or None"
            )
        return act

    def save_pretrained(
        self, save_directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None
    ) -> None:
        """Write ``config.json``, ``switchable_config.json`` and ``model.safetensors``.

        The weights are this module's own state dict (keys ``model.…``): every quantizer step
        and ``initialized`` flag included, each shared (tied) tensor stored once. ``state_dict``
        (HF's argument) replaces it, e.g. one gathered by Accelerate under FSDP / ZeRO-3.
        """
        save_switchable(self, save_directory, state_dict)

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> SwitchableLM:
        """Rebuild a model written by :meth:`save_pretrained` (local files only, no remote
        code; see :func:`~router_pipelines.models.switchable_io.load_switchable`)."""
        return load_switchable(cls, directory, device)
