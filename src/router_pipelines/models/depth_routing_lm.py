"""A transformers causal LM with routed blocks swapped in: :class:`DepthRoutingLM`.

:func:`make_depth_routing` swaps blocks in place (MoD: every other block behind a router;
DTF: each block pair into a :class:`~router_pipelines.models.dtf.DTFPair`); the HF model's
embeddings, rotary embedding, masks, KV cache, loss and ``generate`` stay its own. A folder
holds ``config.json``, ``depth_routing_config.json`` and ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file, save_model
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

from router_pipelines.config import check_choice, config_from_dict
from router_pipelines.models.depth_routing import (
    ROUTING_MODES,
    DepthRoutingConfig,
    PassThrough,
    RoutedComputation,
)
from router_pipelines.models.dtf import DTFPair
from router_pipelines.models.hf_files import CONFIG_NAME, load_hf_config, read_json_file
from router_pipelines.models.layers import find_decoder_blocks
from router_pipelines.models.mod import MoDBlock
from router_pipelines.storage import WEIGHTS_NAME, load_weights, shared_storage_once

DEPTH_ROUTING_CONFIG_NAME = "depth_routing_config.json"
SUPPORTED_BLOCKS = ("Qwen2DecoderLayer", "LlamaDecoderLayer", "MistralDecoderLayer")


def check_supported(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The block list, when its blocks are ones routing supports (rotary, ``self_attn``).

    Raises:
        ValueError: naming the block class and the supported ones.
    """
    name, blocks = find_decoder_blocks(model)
    kinds = sorted({type(block).__name__ for block in blocks})
    unsupported = [kind for kind in kinds if kind not in SUPPORTED_BLOCKS]
    if unsupported:
        raise ValueError(
            f"model: {type(model).__name__} has {unsupported} blocks; token routing supports "
            f"{list(SUPPORTED_BLOCKS)} (rotary embeddings, a self_attn with layer_idx)"
        )
    return name, blocks


def make_depth_routing(model: PreTrainedModel, config: DepthRoutingConfig) -> PreTrainedModel:
    """Swap ``model``'s blocks for routed ones, in place; returns ``model``.

    Raises:
        ValueError: unsupported blocks, a routed layer out of range, or (DTF) an odd count.
    """
    _, blocks = check_supported(model)
    hidden = model.config.hidden_size
    if config.model_type == "mod":
        for index in config.layers_to_route(len(blocks)):
            blocks[index] = MoDBlock(blocks[index], hidden, config)
    else:
        eps = getattr(model.config, "rms_norm_eps", 1e-6)
        for decision, dynamic in config.dtf_pairs(len(blocks)):
            attention_type = getattr(blocks[dynamic], "attention_type", "full_attention")
            blocks[decision] = DTFPair(blocks[decision], blocks[dynamic], hidden, config, eps)
            blocks[dynamic] = PassThrough(attention_type)
    for module in model.modules():
        if isinstance(module, RoutedComputation):
            device = next(module.block.parameters()).device
            module.to(device)
    if not cached_generation_ok(model):
        # HF derives positions and the dense layers' mask from block 0's cache: routed there,
        # its cache holds only the selected tokens, so generation recomputes without a cache.
        model.generation_config.use_cache = False
    return model


def _share_padding(model: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of the HF model: hand the routed blocks the forward's padding (its 2-D
    attention mask, when it has a 0), see ``RoutedComputation.padding``."""
    mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
    padding = None
    if isinstance(mask, torch.Tensor) and mask.dim() == 2 and not bool(mask.all()):
        padding = mask.bool()
    for module in model.modules():
        if isinstance(module, RoutedComputation):
            module.padding = padding


def cached_generation_ok(model: nn.Module) -> bool:
    _, blocks = find_decoder_blocks(model)
    return not isinstance(blocks[0], MoDBlock)


class DepthRoutingLM(nn.Module):
    """A swapped causal LM with routing-mode control, saving and loading."""

    def __init__(self, model: PreTrainedModel, config: DepthRoutingConfig) -> None:
        super().__init__()
        self.model = model
        self.routing_config = config
        if not self.routed_modules():
            raise ValueError("model: has no routed block; build it with DepthRoutingLM.from_base")
        model.register_forward_pre_hook(_share_padding, with_kwargs=True)

    @classmethod
    def from_base(cls, model: PreTrainedModel, config: DepthRoutingConfig) -> DepthRoutingLM:
        """Swap ``model`` in place and wrap it (deep-copy first to keep the dense model)."""
        return cls(make_depth_routing(model, config), config)

    @property
    def config(self) -> PretrainedConfig:
        return self.model.config

    @property
    def generation_config(self) -> Any:
        return self.model.generation_config

    def routed_modules(self) -> list[nn.Module]:
        """The MoD blocks or DTF pairs, in depth order (each has ``.last``)."""
        return [m for m in self.model.modules() if isinstance(m, MoDBlock | DTFPair)]

    def routed_layer_indices(self) -> list[int]:
        return [m.routing.layer_idx for m in self.routed_modules()]

    def set_routing_mode(self, mode: str) -> None:
        """``topk`` (training, teacher-forced evaluation) or ``causal`` (each token decides
        from its own predictor logit: what generation uses)."""
        check_choice("mode", mode, ROUTING_MODES)
        for module in self.model.modules():
            if isinstance(module, RoutedComputation):
                module.mode = mode

    @property
    def routing_mode(self) -> str:
        return self.routed_modules()[0].routing.mode

    @contextmanager
    def routing_mode_as(self, mode: str) -> Iterator[None]:
        before = self.routing_mode
        self.set_routing_mode(mode)
        try:
            yield
        finally:
            self.set_routing_mode(before)

    @torch.no_grad()
    def calibrate_causal_thresholds(self, batches: Iterable[torch.Tensor]) -> list[float]:
        """Set each routed block's causal threshold to the (1 − γ) quantile of its causal
        logits over ``batches`` of input ids (B, T), run in top-k mode (the training-time
        inputs), so causal routing computes about γ of the tokens. Returns the thresholds."""
        logits: list[list[torch.Tensor]] = [[] for _ in self.routed_modules()]
        was_training = self.training
        self.eval()
        with self.routing_mode_as("topk"):
            for input_ids in batches:
                self(input_ids=input_ids)
                for store, module in zip(logits, self.routed_modules(), strict=True):
                    store.append(module.routing.causal_logits(module.last).flatten())
        self.train(was_training)
        thresholds = []
        for store, module in zip(logits, self.routed_modules(), strict=True):
            values = torch.cat(store).float().cpu()  # quantile off MPS: a small host tensor
            gamma = module.routing.capacity_gamma
            threshold = torch.quantile(values, 1 - gamma) if gamma < 1 else values.min() - 1
            module.routing.causal_threshold.fill_(float(threshold))
            thresholds.append(float(threshold))
        return thresholds

    def forward(self, **kwargs: Any) -> Any:
        """The HF model's forward (``input_ids``, ``attention_mask``, ``labels``, ...); without
        a KV cache unless ``use_cache`` is asked for (a cache forces explicit masks)."""
        kwargs.setdefault("use_cache", False)
        return self.model(**kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """The HF model's ``generate``, routed causally (top-k over the sequence would look
        ahead)."""
        with self.routing_mode_as("causal"):
            return self.model.generate(*args, **kwargs)

    def activation_checkpointing_enable(self, **kwargs: Any) -> None:
        """Delegates to the HF model (transformers 5): the wrapped decoder layers checkpoint."""
        self.model.activation_checkpointing_enable(**kwargs)

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.model.gradient_checkpointing_enable(**kwargs)

    def save_pretrained(
        self,
        directory: str | Path,
        state_dict: Mapping[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> None:
        """Write config.json, depth_routing_config.json and model.safetensors."""
        del kwargs
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.model.config.save_pretrained(path)
        text = json.dumps(dataclasses.asdict(self.routing_config), indent=2)
        (path / DEPTH_ROUTING_CONFIG_NAME).write_text(text + "\n", encoding="utf-8")
        if state_dict is None:
            save_model(self, str(path / WEIGHTS_NAME))
        else:
            save_file(shared_storage_once(state_dict), str(path / WEIGHTS_NAME), {"format": "pt"})

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DepthRoutingLM:
        """Rebuild a folder written by :meth:`save_pretrained` (local files, no remote code).

        Raises:
            FileNotFoundError: a file is missing, naming it.
            ValueError: a config that does not parse, or weights that do not match.
        """
        from transformers import AutoModelForCausalLM

        path = Path(directory)
        for name in (CONFIG_NAME, DEPTH_ROUTING_CONFIG_NAME, WEIGHTS_NAME):
            if not (path / name).is_file():
                raise FileNotFoundError(
                    f"directory: {path} has no {name}; expected a DepthRoutingLM.save_pretrained "
                    "output"
                )
        config_file = path / DEPTH_ROUTING_CONFIG_NAME
        config = config_from_dict(DepthRoutingConfig, read_json_file(config_file), str(config_file))
        base = AutoModelForCausalLM.from_config(load_hf_config(path))
        model = cls.from_base(base, config)
        load_weights(model, path / WEIGHTS_NAME, strict=True)
        return model.eval()


def load_depth_routing_model(directory: str | Path, trust_remote_code: bool = False) -> nn.Module:
    """The model-bundle loader of the ``depth_routing`` family (``models.bundle``)."""
    del trust_remote_code  # the architecture is always built from installed classes
    return DepthRoutingLM.from_pretrained(directory)
