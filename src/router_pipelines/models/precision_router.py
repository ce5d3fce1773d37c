"""A router that picks each decoder block's weight width from the input (seed 000).

:class:`LayerwiseQuantizeForCausalLM` wraps a frozen multi-precision model (a
:class:`~router_pipelines.models.switchable.SwitchableLM`, switchable-trained or
post-training quantized) and adds one small :class:`LayerRouter` per decoder block. Before a
block runs, its router reads the hidden state entering it and chooses one of ``precisions``
for every quantized linear of the block, per sequence (pooled hidden state, decided once from
the prompt) or per token. The linears are swapped for :class:`RoutedQuantLinear`, a
``QuantLinear`` sharing the same parameters, so state-dict keys and the switchable model's own
precision control are unchanged; without gates it is the ``QuantLinear`` itself.

- :meth:`~LayerwiseQuantizeForCausalLM.train_forward`: differentiable choice (hard forward,
  softmax backward; or a mix of the two neighbouring widths), logits and bits per layer.
- :meth:`~LayerwiseQuantizeForCausalLM.infer_forward`: hard choice (``argmax`` of the logits
  minus ``price`` times the normalised bits, the knob budget calibration turns).
- ``save_router`` / ``load_router``: the router's state on its own; ``save_pretrained`` adds the
  multi-precision model under ``quantized/`` so the folder loads on its own.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from router_pipelines.config import check_choice
from router_pipelines.models.layers import find_decoder_blocks
from router_pipelines.models.precision_router_parts import (
    BitsTally,
    LayerRouter,
    PackedRoutedLinear,
    RoutedQuantLinear,
    RouterConfig,
    differentiable_choice,
)
from router_pipelines.models.quant_modules import QuantLinear
from router_pipelines.models.switchable import SwitchableLM
from router_pipelines.storage import WEIGHTS_NAME

ROUTER_CONFIG_NAME = "precision_router_config.json"
ROUTER_WEIGHTS_NAME = "router.safetensors"
QUANTIZED_DIR = "quantized"  # the multi-precision model inside a saved router folder


class LayerwiseQuantizeForCausalLM(nn.Module):
    """A frozen multi-precision causal LM with one precision router per decoder block.

    Args:
        quantized: the multi-precision model (changed in place: its block linears are swapped
            for :class:`RoutedQuantLinear`, which compute the same without gates; frozen).
        config: the routers' settings.
        precisions: the widths the routers choose from (default: all the model has).
    """

    def __init__(
        self,
        quantized: SwitchableLM,
        config: RouterConfig | None = None,
        precisions: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(quantized, SwitchableLM):
            raise ValueError(
                f"quantized: expected a multi-precision SwitchableLM, got {type(quantized).__name__}"
            )
        self.router_config = config or RouterConfig()
        available = sorted(quantized.switchable_config.bit_widths)
        chosen = sorted(available if precisions is None else precisions)
        bad = [b for b in chosen if b not in available]
        if bad or len(set(chosen)) != len(chosen) or len(chosen) < 2:
            raise ValueError(
                f"precisions: {list(precisions or [])} must be at least two distinct widths of "
                f"the model; it has {available}"
            )
        self.precisions = chosen
        self.quantized = quantized.requires_grad_(False)
        self.quantized.eval()
        _, blocks = find_decoder_blocks(quantized.model)
        self._blocks = list(blocks)
        policy = quantized.switchable_config.act_bits_for
        self._routed: list[list[RoutedQuantLinear]] = []
        layer_params = []
        for index, groups in enumerate(quantized._layer_groups):
            routed = []
            for name in groups["attn"] + groups["mlp"]:
                parent, _, child = name.rpartition(".")
                layer = quantized.model.get_submodule(name)
                if not isinstance(layer, RoutedQuantLinear):
                    layer = RoutedQuantLinear(layer, chosen, [policy(b) for b in chosen])
                    setattr(quantized.model.get_submodule(parent), child, layer)
                routed.append(layer)
            if not routed:
                raise ValueError(f"quantized: decoder block {index} has no quantized linear")
            self._routed.append(routed)
            layer_params.append(sum(layer.weight.numel() for layer in routed))
        self.register_buffer("layer_params", torch.tensor(layer_params, dtype=torch.float64))
        hidden = quantized.config.hidden_size
        cfg = self.router_config
        generator = torch.Generator().manual_seed(cfg.seed)
        n_delta = len(chosen) - 1 if cfg.delta_feature else 0
        self.feature_size = hidden + int(cfg.norm_feature) + n_delta
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.routers = nn.ModuleList(
                LayerRouter(self.feature_size, len(chosen), cfg.hidden_size) for _ in self._routed
            )
        if cfg.delta_feature:  # (L, n_widths - 1, k, in): R^T (W_b - W_max) / sqrt(k)
            self.register_buffer("delta_projections", self._delta_projections(generator))
        self.register_buffer(
            "width_bits", torch.tensor(chosen, dtype=torch.float32), persistent=False
        )
        self.mode: str | None = None  # None: plain model; "train" | "infer": routed
        self.price = 0.0  # infer: argmax(logits - price * normalised bits)
        self.forced: list[int] | None = None  # infer: one width per block, bypassing routers
        self._attention_mask: torch.Tensor | None = None
        self._decoding = False
        self._records: list[dict[str, torch.Tensor] | None] = [None] * len(self._routed)
        self.tally: BitsTally | None = None  # accumulates the routed forwards' choices
        self._sequence_gates: list[torch.Tensor | None] = [None] * len(self._routed)
        for index, block in enumerate(self._blocks):
            # a partial of a bound method (not a closure): deepcopy copies it with the model
            block.register_forward_pre_hook(partial(self._route, index), with_kwargs=True)

    # --- construction and state -----------------------------------------------------------
    @classmethod
    def from_quantized(
        cls,
        quant_model_path: str | Path,
        config: RouterConfig | None = None,
        precisions: Sequence[int] | None = None,
        device: str = "cpu",
    ) -> LayerwiseQuantizeForCausalLM:
        """Wrap the multi-precision model saved at ``quant_model_path`` (a
        ``SwitchableLM.save_pretrained`` folder, e.g. ``data/06_models/switchable/<v>/switchable``).

        Raises:
            ValueError: the folder is not a multi-precision model, naming what is missing.
        """
        path = Path(quant_model_path)
        if not (path / "switchable_config.json").is_file():
            raise ValueError(
                f"quant_model_path: {str(path)!r} is not a multi-precision model (no "
                "switchable_config.json); give a switchable model folder or use the ptq source"
            )
        return cls(SwitchableLM.from_pretrained(path, device), config, precisions)

    @property
    def config(self) -> Any:
        """The HF model config (the sweep and ``generate`` read it)."""
        return self.quantized.config

    @property
    def num_layers(self) -> int:
        return len(self._routed)

    def router_parameters(self) -> list[nn.Parameter]:
        return list(self.routers.parameters())

    @torch.no_grad()
    def init_static(self, widths: Sequence[int], margin: float = 3.0) -> None:
        """Start every block's router at one width: the last layer's bias is ``margin`` on
        ``widths[l]`` and 0 elsewhere, its weights scaled down to 1 %, so the hard choice is
        that static assignment for every input and training can move away from it only where
        the input says so (the budget routers start at the best static allocation).

        Raises:
            ValueError: not one width of :attr:`precisions` per block.
        """
        widths = list(widths)
        if len(widths) != self.num_layers or any(b not in self.precisions for b in widths):
            raise ValueError(
                f"widths: expected {self.num_layers} widths from {self.precisions}, got {widths}"
            )
        for router, bits in zip(self.routers, widths, strict=True):
            last = router.net[-1]
            last.weight.mul_(0.01)
            last.bias.zero_()
            last.bias[self.precisions.index(bits)] = float(margin)

    def router_state_dict(self) -> dict[str, torch.Tensor]:
        """The routers' weights (and the delta projections), nothing of the frozen model."""
        state = {f"routers.{k}": v for k, v in self.routers.state_dict().items()}
        if self.router_config.delta_feature:
            state["delta_projections"] = self.delta_projections
        return state

    def router_metadata(self) -> dict[str, Any]:
        return {
            "router": asdict(self.router_config),
            "precisions": self.precisions,
            "num_layers": self.num_layers,
            "feature_size": self.feature_size,
        }

    def save_router(self, directory: str | Path) -> None:
        """Write ``precision_router_config.json`` and ``router.safetensors`` only."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / ROUTER_CONFIG_NAME).write_text(json.dumps(self.router_metadata(), indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.router_state_dict().items()}
        save_file(state, str(path / ROUTER_WEIGHTS_NAME))

    def load_router(self, directory: str | Path) -> None:
        """Load a router written by :meth:`save_router` (it must fit this model).

        Raises:
            ValueError: another width set, depth or feature layout, naming both.
        """
        path = Path(directory)
        recorded = json.loads((path / ROUTER_CONFIG_NAME).read_text())
        ours = self.router_metadata()
        differ = [k for k in ("precisions", "num_layers", "feature_size") if recorded[k] != ours[k]]
        if differ:
            raise ValueError(
                f"{path / ROUTER_CONFIG_NAME}: the router was built for "
                f"{ {k: recorded[k] for k in differ} }, this model has { {k: ours[k] for k in differ} }"
            )
        state = load_file(str(path / ROUTER_WEIGHTS_NAME))
        self.routers.load_state_dict(
            {k.removeprefix("routers."): v for k, v in state.items() if k.startswith("routers.")}
        )
        if "delta_projections" in state:
            self.delta_projections.copy_(state["delta_projections"])

    def save_pretrained(
        self,
        save_directory: str | Path,
        state_dict: dict[str, torch.Tensor] | None = None,
        **_: Any,
    ) -> None:
        """The router files plus the multi-precision model under ``quantized/``.

        With ``state_dict`` (the engine's ``best/`` of a trainable-only run) only those
        tensors are written, as ``model.safetensors``, beside the router config.
        """
        if state_dict is not None:
            path = Path(save_directory)
            path.mkdir(parents=True, exist_ok=True)
            (path / ROUTER_CONFIG_NAME).write_text(
                json.dumps(self.router_metadata(), indent=2) + "\n"
            )
            tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
            save_file(tensors, str(path / WEIGHTS_NAME), {"format": "pt"})
            return
        self.save_router(save_directory)
        self.quantized.model.config.save_pretrained(save_directory)  # the folder reads as a model
        self.quantized.save_pretrained(Path(save_directory) / QUANTIZED_DIR)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str = "cpu") -> Any:
        path = Path(directory)
        recorded = json.loads((path / ROUTER_CONFIG_NAME).read_text())
        model = cls.from_quantized(
            path / QUANTIZED_DIR, RouterConfig(**recorded["router"]), recorded["precisions"], device
        )
        model.load_router(path)
        return model.to(device)

    # --- forwards ---------------------------------------------------------------------------
    def forward(self, **kwargs: Any) -> Any:
        """The HF model's forward, routed as :attr:`mode` says (``None``: as the model is set)."""
        self._attention_mask = kwargs.get("attention_mask")
        past = kwargs.get("past_key_values")
        self._decoding = past is not None and past.get_seq_length() > 0
        try:
            output = self.quantized.model(**kwargs)
            if self.tally is not None and self.mode is not None:
                self.tally.add(self._records, self._attention_mask, self.width_bits)
            return output
        finally:
            self._attention_mask = None
            for routed in self._routed:
                for layer in routed:
                    layer.gates = None

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """``generate`` of the multi-precision model, routed by the current mode."""
        return _RoutedGenerate(self).generate(*args, **kwargs)

    def train_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward with the differentiable choice.

        Returns:
            ``logits`` ``(B, T, V)``, ``loss`` (CE with ``labels`` if given), ``chosen_bits``
            and ``expected_bits`` ``(L,)`` (mean over sequences or valid tokens; the first is
            the realised width, the second its softmax expectation), ``mean_bits`` (the
            parameter-weighted mean of ``chosen_bits``: its forward value is the realised mean,
            its gradient the soft one).
        """
        with self.routing("train"):
            output = self(input_ids=input_ids, attention_mask=attention_mask, labels=labels)
            stats = self._layer_stats(attention_mask)
        return {"logits": output.logits, "loss": output.loss, **stats}

    @torch.no_grad()
    def infer_forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        forced: Sequence[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward with the hard choice (or the widths ``forced`` per block).

        Returns:
            ``logits``; ``choices`` ``(B, L)`` per sequence or ``(B, T, L)`` per token (the
            width in bits); ``chosen_bits`` ``(L,)`` and ``mean_bits`` as in :meth:`train_forward`.
        """
        with self.routing("infer", forced=forced):
            output = self(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
            stats = self._layer_stats(attention_mask)
            choices = torch.stack([r["bits"] for r in self._records], dim=-1)
        return {"logits": output.logits, "choices": choices, **stats}

    @contextlib.contextmanager
    def routers_swapped(self, state: Mapping[str, torch.Tensor] | None) -> Iterator[None]:
        """The routers' weights replaced by ``state`` (a ``routers.state_dict()``, e.g. a
        router trained for one budget) inside the block and restored after it; ``None``:
        unchanged."""
        if state is None:
            yield
            return
        saved = {k: v.detach().clone() for k, v in self.routers.state_dict().items()}
        self.routers.load_state_dict(state)
        try:
            yield
        finally:
            self.routers.load_state_dict(saved)

    @contextlib.contextmanager
    def routing(
        self, mode: str | None, price: float | None = None, forced: Sequence[int] | None = None
    ) -> Iterator[None]:
        """Route in ``mode`` (``"train"``, ``"infer"`` or ``None``) inside the block."""
        check_choice("mode", mode, ("train", "infer", None))
        if forced is not None:
            forced = list(forced)
            if len(forced) != self.num_layers or any(b not in self.precisions for b in forced):
                raise ValueError(
                    f"forced: expected {self.num_layers} widths from {self.precisions}, got {forced}"
                )
        saved = (self.mode, self.price, self.forced)
        self.mode = mode
        self.price = self.price if price is None else float(price)
        self.forced = forced
        self._sequence_gates = [None] * self.num_layers
        try:
            yield
        finally:
            self.mode, self.price, self.forced = saved

    # --- routing ----------------------------------------------------------------------------
    def _route(self, index: int, module: nn.Module, args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of block ``index``: its router sets the gates of its linears."""
        del module
        if self.mode is None:
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        gates = self._gates(index, hidden)
        for layer in self._routed[index]:
            layer.gates = gates

    def _gates(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Gates ``(B, T or 1, n_widths)`` for block ``index`` from its input ``(B, T, d)``."""
        sequence = self.router_config.granularity == "sequence"
        if sequence and self._decoding and self._sequence_gates[index] is not None:
            return self._sequence_gates[index]  # decided once, from the prompt
        n = len(self.precisions)
        if self.mode == "infer" and self.forced is not None:
            rows = hidden.shape[:1] + ((1,) if sequence else hidden.shape[1:2])  # (B, T or 1)
            choice = torch.full(rows, self.precisions.index(self.forced[index]), dtype=torch.long)
            gates = F.one_hot(choice.to(hidden.device), n).float()
            self._record(index, gates, None)
        else:
            logits = self.routers[index](self._features(index, hidden))  # (B, T or 1, n)
            if self.mode == "train":
                gates, probs = differentiable_choice(logits, self.router_config, self.width_bits)
            else:
                cost = (self.width_bits - self.width_bits[0]) / (
                    self.width_bits[-1] - self.width_bits[0]
                )
                gates = F.one_hot((logits - self.price * cost).argmax(-1), n).float()
                probs = logits.softmax(-1)
            self._record(index, gates, probs)
        if sequence:
            self._sequence_gates[index] = gates.detach()
        return gates

    def _features(self, index: int, hidden: torch.Tensor) -> torch.Tensor:
        """Cheap features of the block input ``(B, T, d)`` -> ``(B, T or 1, F)``."""
        hidden = hidden.float()
        if self.router_config.granularity == "sequence":
            mask = self._attention_mask
            if mask is None or mask.shape[1] != hidden.shape[1]:
                mask = torch.ones(hidden.shape[:2], device=hidden.device)
            mask = mask.float()
            if self.router_config.prefix_tokens is not None:
                mask = mask.clone()
                mask[:, self.router_config.prefix_tokens :] = 0
            weights = mask / mask.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, T)
            hidden = (hidden * weights[..., None]).sum(dim=1, keepdim=True)  # (B, 1, d)
        rms = hidden.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        parts = [hidden / rms]
        if self.router_config.norm_feature:
            parts.append(rms.log())
        if self.router_config.delta_feature:
            projections = self.delta_projections[index]  # (n - 1, k, d)
            change = torch.einsum("btd,nkd->btnk", hidden, projections).norm(dim=-1)
            parts.append(change.add(1e-6).log())  # (B, T, n - 1)
        return torch.cat(parts, dim=-1)

    def _record(self, index: int, gates: torch.Tensor, probs: torch.Tensor | None) -> None:
        bits = (gates * self.width_bits).sum(-1)  # (B, T or 1): value = chosen width
        expected = bits if probs is None else (probs * self.width_bits).sum(-1)
        self._records[index] = {
            "bits": bits.squeeze(-1) if bits.shape[-1] == 1 else bits,
            "raw": bits,
            "expected": expected,
        }

    def _layer_stats(self, attention_mask: torch.Tensor | None) -> dict[str, torch.Tensor]:
        chosen, expected = [], []
        for record in self._records:
            raw, exp = record["raw"], record["expected"]  # (B, T or 1)
            if raw.shape[1] > 1 and attention_mask is not None:
                weights = attention_mask.float() / attention_mask.float().sum().clamp_min(1.0)
            else:
                weights = torch.full_like(raw, 1.0 / raw.numel())
            chosen.append((raw * weights).sum())
            expected.append((exp * weights).sum())
        chosen_bits = torch.stack(chosen)  # (L,)
        share = (self.layer_params / self.layer_params.sum()).to(chosen_bits.dtype)
        return {
            "chosen_bits": chosen_bits,
            "expected_bits": torch.stack(expected),
            "mean_bits": (chosen_bits * share).sum(),
        }

    @contextlib.contextmanager
    def tallying(self) -> Iterator[BitsTally]:
        """Count the widths chosen by every routed forward inside the block."""
        saved = self.tally
        self.tally = BitsTally(self.layer_params.cpu(), self.precisions)
        try:
            yield self.tally
        finally:
            self.tally = saved

    def last_choices(self) -> list[torch.Tensor]:
        """The widths chosen per block in the last routed forward: ``(B,)`` or ``(B, T)``."""
        return [record["bits"] for record in self._records]

    def _delta_projections(self, generator: torch.Generator) -> torch.Tensor:
        k = self.router_config.delta_rank
        projections = []
        top = self.precisions[-1]
        for routed in self._routed:
            layer = routed[0]  # the block's first linear reads (a norm of) the block input
            with torch.no_grad():
                high = layer.weight_quantizer(layer.weight, top).float()
                rand = torch.randn(k, layer.out_features, generator=generator) / math.sqrt(k)
                rows = [
                    rand @ (layer.weight_quantizer(layer.weight, b).float() - high)
                    for b in self.precisions[:-1]
                ]
            projections.append(torch.stack(rows))  # (n - 1, k, in)
        return torch.stack(projections)

    def router_flops_share(self) -> dict[str, float]:
        """The routers' FLOPs per decision, the model's per token, and their ratio."""
        per_decision = sum(router.flops_per_decision() for router in self.routers)
        if self.router_config.delta_feature:
            per_decision += int(2 * self.delta_projections[0].numel() * self.num_layers)
        linears = [
            m for m in self.quantized.model.modules() if isinstance(m, nn.Linear | QuantLinear)
        ]
        model_flops = sum(2 * m.weight.numel() for m in linears)
        head = self.quantized.model.get_output_embeddings()
        if head is not None and not isinstance(head, nn.Linear | QuantLinear):
            model_flops += 2 * head.weight.numel()
        return {
            "router_flops_per_decision": float(per_decision),
            "model_flops_per_token": float(model_flops),
            "router_flops_share": per_decision / model_flops,
        }


class _RoutedGenerate:
    """Runs ``transformers``' ``generate`` with every model call going through the router."""

    def __init__(self, router: LayerwiseQuantizeForCausalLM) -> None:
        self.router = router

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        model = self.router.quantized.model
        original = model.forward
        router = self.router

        def routed_forward(*f_args: Any, **f_kwargs: Any) -> Any:
            past = f_kwargs.get("past_key_values")
            router._decoding = past is not None and past.get_seq_length() > 0
            router._attention_mask = f_kwargs.get("attention_mask")
            output = original(*f_args, **f_kwargs)
            if router.tally is not None and router.mode is not None:
                router.tally.add(router._records, router._attention_mask, router.width_bits)
            return output

        model.forward = routed_forward
        try:
            return model.generate(*args, **kwargs)
        finally:
            del model.forward
            for routed in router._routed:
                for layer in routed:
                    layer.gates = None


def pack_precision_router(
    router: LayerwiseQuantizeForCausalLM, compute_dtype: torch.dtype | None = None
) -> LayerwiseQuantizeForCausalLM:
    """A copy of ``router`` whose routed linears run on packed kernels (inference only).

    Every routed linear becomes a :class:`PackedRoutedLinear` holding its codes at each of the
    router's widths, so the choices the routers make (or ``routing(forced=...)``) run real
    int4 / int8 kernels: a per-layer mix is timed as it would deploy, not simulated. The
    routers, features and sequence decisions are the router's own; ``router`` is not changed.
    Weight-only (activation fake quantization dropped); the modules outside the blocks
    (embeddings, LM head) stay as they are.

    Args:
        router: a :class:`LayerwiseQuantizeForCausalLM`.
        compute_dtype: dtype the kernels run in (``None``: the activations'); ``torch.bfloat16``
            is the fast one on CPUs with AVX-512-BF16 / AMX.

    Raises:
        NotImplementedError: a width outside 2..8 bits, or a layer shape the int4 kernel
            cannot take; the message names the layer.
    """
    packed = copy.deepcopy(router)  # the hooks are partials of bound methods: they follow
    names = {id(module): name for name, module in packed.quantized.model.named_modules()}
    for index, routed in enumerate(packed._routed):
        swapped = []
        for layer in routed:
            name = names[id(layer)]
            try:
                module = PackedRoutedLinear(layer, compute_dtype)
            except NotImplementedError as err:
                raise NotImplementedError(f"{name}: {err}") from err
            parent, _, child = name.rpartition(".")
            setattr(packed.quantized.model.get_submodule(parent), child, module)
            swapped.append(module)
        packed._routed[index] = swapped
    return packed.eval()


def load_precision_router(
    directory: str | Path, trust_remote_code: bool = False
) -> LayerwiseQuantizeForCausalLM:
    """The model-bundle loader of the ``precision_router`` family (see ``models.bundle``);
    ``trust_remote_code`` is accepted for the loader contract and ignored."""
    del trust_remote_code
    return LayerwiseQuantizeForCausalLM.from_pretrained(directory)
