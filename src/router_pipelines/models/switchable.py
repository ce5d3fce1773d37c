"""Precision-switchable causal LMs: swap linear layers for :class:`QuantLinear`, then switch.

``make_switchable`` replaces, in place, every ``nn.Linear`` and GPT-2 ``Conv1D`` of a
transformers causal LM (except the LM head, unless asked) by a :class:`QuantLinear` holding
the same weights and one quantizer per bit width, and, if asked, every ``nn.Embedding`` by a
:class:`QuantEmbedding`. :class:`SwitchableLM` wraps the swapped model and sets the precision
of all layers at once (``set_precision``) or per block (``set_layer_precision``); ``forward``
is the HF model's, so losses and ``generate`` work unchanged. At full precision the model
computes exactly what the base model computed.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file, save_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from router_pipelines.config import check_choice, config_from_dict
from router_pipelines.models.quant_modules import QuantEmbedding, QuantLinear
from router_pipelines.models.quantization import (
    STEP_INITS,
    MultiWidthQuantizer,
    NestedQuantizer,
    check_bit_width,
    check_precision,
)

__all__ = ["QuantEmbedding", "QuantLinear", "SwitchableConfig", "SwitchableLM", "make_switchable"]

SWITCHABLE_CONFIG_NAME = "switchable_config.json"
WEIGHTS_NAME = "model.safetensors"
LAYER_KEYS = ("attn_bits", "mlp_bits")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")  # block sub-module names counted as the MLP
_FOLLOW_POLICY = object()  # set_precision default: activation bits from SwitchableConfig.act_bits


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
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
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
        blocks_name, num_layers = _find_blocks(model)
        self._layer_groups: list[dict[str, list[str]]] = []
        for index in range(num_layers):
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
        for name, module in self.quant_modules().items():
            module.set_bits(*saved[name])
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
        path = Path(save_directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(path)
        config_json = json.dumps(dataclasses.asdict(self.switchable_config), indent=2)
        (path / SWITCHABLE_CONFIG_NAME).write_text(config_json + "\n")
        if state_dict is None:
            save_model(self, str(path / WEIGHTS_NAME))
        else:
            save_file(_store_shared_once(state_dict), str(path / WEIGHTS_NAME), {"format": "pt"})

    @classmethod
    def from_pretrained(
        cls, directory: str | Path, device: str | torch.device = "cpu"
    ) -> SwitchableLM:
        """Rebuild a model written by :meth:`save_pretrained` (local files only).

        Builds the architecture with ``AutoModelForCausalLM.from_config`` (no remote code),
        swaps it with the saved :class:`SwitchableConfig` and loads the weights strictly.
        """
        path = Path(directory)
        for name in ("config.json", SWITCHABLE_CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"directory: {path} has no {name}; expected a SwitchableLM.save_pretrained output"
                )
        switchable_config = config_from_dict(
            SwitchableConfig,
            json.loads((path / SWITCHABLE_CONFIG_NAME).read_text()),
            SWITCHABLE_CONFIG_NAME,
        )
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
        switchable = cls.from_base(model, switchable_config)
        saved = load_file(str(path / WEIGHTS_NAME))
        missing, unexpected = switchable.load_state_dict(saved, strict=False)
        current = switchable.state_dict()
        loaded = {current[k].data_ptr() for k in saved if k in current}
        untied = [k for k in missing if current[k].data_ptr() not in loaded]
        if unexpected or untied:  # only keys tied to a loaded tensor may be absent
            raise ValueError(
                f"{path / WEIGHTS_NAME}: weights do not match the model: unexpected keys "
                f"{unexpected[:5]}, missing keys {untied[:5]}"
            )
        return switchable.to(device)


def _store_shared_once(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with each shared storage (tied weights) kept under its first key only;
    safetensors refuses tensors that share memory."""
    kept, seen = {}, set()
    for key, tensor in state_dict.items():
        pointer = (
            (tensor.device, tensor.data_ptr(), tuple(tensor.shape)) if tensor.numel() else None
        )
        if pointer is not None and pointer in seen:
            continue
        if pointer is not None:
            seen.add(pointer)
        kept[key] = tensor.detach().contiguous()
    return kept


def _find_blocks(model: PreTrainedModel) -> tuple[str, int]:
    """Name and length of the decoder-block list: the ``nn.ModuleList`` whose length is
    ``config.num_hidden_layers`` and which holds QuantLinears (GPT-2 ``transformer.h``,
    Llama/Qwen2 ``model.layers``)."""
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.ModuleList)
            and len(module) == num_layers
            and any(isinstance(m, QuantLinear) for m in module.modules())
        ):
            return name, num_layers
    raise ValueError(
        f"model: found no nn.ModuleList of config.num_hidden_layers={num_layers} blocks "
        "holding QuantLinear layers"
    )
