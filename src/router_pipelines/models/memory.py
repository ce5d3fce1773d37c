"""Mixture-of-Chapters memory adapter (seed 002): a learned memory bank on a frozen or LoRA base.

A bank of ``num_memory_tokens`` latent tokens is split into chapters of ``chapter_size``
tokens (plus ``shared_chapters`` always-on chapters). At each memory layer a per-sequence
router (masked mean-pool of the block's output → linear → softmax, in fp32) picks the top-k
chapters and renormalises their probabilities; the hidden states then cross-attend to the
chosen chapters (queries from the tokens, keys/values from the memory, RMSNorm first) and
the result is added to the residual::

    h <- h + W_o · Σ_{i ∈ top-k} p̂_i · Attn(q(RMSNorm(h)), K_i, V_i)  [+ Attn(.., shared)]

Each chapter is attended to on its own and weighted by its renormalised probability, so the
router is on the gradient path of the language-model loss (top-k itself has no gradient).
``W_o`` is zero-initialised: at step 0 the adapted model computes exactly the base model.

The base is left untouched: the memory is added by forward hooks on the chosen decoder
blocks (:func:`~router_pipelines.models.layers.find_decoder_blocks`), so any causal LM (GPT-2,
Llama, Qwen2, a ``peft`` LoRA model) works. The router's logits and picks of every memory
layer are returned with the output (``routing``) for the auxiliary losses and utilisation.

The bank is one ``nn.Parameter`` shared by every memory layer: an unselected chapter's rows get
a zero gradient rather than none, so DDP needs no ``find_unused_parameters`` for it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from router_pipelines.config import (
    check_bool,
    check_choice,
    check_int,
    check_optional_int,
    check_positive,
    config_from_dict,
)
from router_pipelines.models.layers import find_decoder_blocks

MEMORY_CONFIG_FILE = "memory_config.json"
MEMORY_WEIGHTS_FILE = "memory.safetensors"
SAVE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
ROUTER_INPUTS = ("mean", "standardised")


@dataclass
class MemoryConfig:
    """Shape of the memory adapter; every field is a parameter (``memory.adapter.<field>``)."""

    memory_layers: list[int] | None = (
        None  # decoder block indices (negative from the end); None = all
    )
    num_memory_tokens: int = 256  # bank size: latent tokens over all routed chapters
    chapter_size: int = 32  # tokens per chapter; num_chapters = num_memory_tokens / chapter_size
    top_k: int = 2  # chapters each sequence reads at each memory layer
    shared_chapters: int = 0  # always-on chapters of chapter_size tokens, outside the routing
    memory_dim: int | None = None  # width of a memory token; None = the base's hidden size
    bank_rank: int | None = None  # factorised bank A (N, r) · B (r, memory_dim); None = full
    num_heads: int = 4  # heads of the memory cross-attention
    projection_rank: int | None = None  # low-rank q/k/v/o projections (d -> r -> d); None = full
    init_std: float = 0.02  # bank and projection init (W_o is zero)
    router_input: str = "mean"  # mean (the seed) | standardised: centred, scaled by data stats
    router_noise: float = 0.0  # std of Gaussian noise on the logits that pick (training only)

    def __post_init__(self) -> None:
        if self.memory_layers is not None:
            if not isinstance(self.memory_layers, list) or not self.memory_layers:
                raise ValueError(
                    f"memory_layers: expected a non-empty list of block indices or null, "
                    f"got {self.memory_layers!r}"
                )
            for index in self.memory_layers:
                if isinstance(index, bool) or not isinstance(index, int):
                    raise ValueError(f"memory_layers: {index!r} is not an integer block index")
        check_int("num_memory_tokens", self.num_memory_tokens, minimum=1)
        check_int("chapter_size", self.chapter_size, minimum=1)
        if self.num_memory_tokens % self.chapter_size:
            raise ValueError(
                f"num_memory_tokens: {self.num_memory_tokens} is not divisible by chapter_size "
                f"{self.chapter_size}; use a multiple of it (e.g. "
                f"{self.num_memory_tokens // self.chapter_size * self.chapter_size or self.chapter_size})"
            )
        check_int("top_k", self.top_k, minimum=1)
        if self.top_k > self.num_chapters:
            raise ValueError(
                f"top_k: {self.top_k} exceeds the {self.num_chapters} chapters "
                f"(num_memory_tokens {self.num_memory_tokens} / chapter_size {self.chapter_size}); "
                f"choose 1..{self.num_chapters}"
            )
        check_int("shared_chapters", self.shared_chapters, minimum=0)
        check_optional_int("memory_dim", self.memory_dim, minimum=1)
        check_optional_int("bank_rank", self.bank_rank, minimum=1)
        check_int("num_heads", self.num_heads, minimum=1)
        check_optional_int("projection_rank", self.projection_rank, minimum=1)
        if not (isinstance(self.init_std, (int, float)) and self.init_std > 0):
            raise ValueError(f"init_std: expected a positive number, got {self.init_std!r}")
        check_choice("router_input", self.router_input, ROUTER_INPUTS)
        check_positive("router_noise", self.router_noise, allow_zero=True)

    @property
    def num_chapters(self) -> int:
        return self.num_memory_tokens // self.chapter_size

    def resolve_layers(self, num_layers: int) -> list[int]:
        """The memory layers as sorted non-negative indices into ``num_layers`` blocks.

        Raises:
            ValueError: an index outside the model (naming it and the valid range).
        """
        if self.memory_layers is None:
            return list(range(num_layers))
        resolved = []
        for index in self.memory_layers:
            if not -num_layers <= index < num_layers:
                raise ValueError(
                    f"memory_layers: layer {index} is outside the model's {num_layers} decoder "
                    f"blocks; use 0..{num_layers - 1} (or -{num_layers}..-1 from the end)"
                )
            resolved.append(index % num_layers)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"memory_layers: {self.memory_layers} names a block twice")
        return sorted(resolved)


@dataclass
class MemoryCausalLMOutput(ModelOutput):
    """The base model's ``loss`` / ``logits`` plus each memory layer's routing."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    routing: tuple[dict[str, torch.Tensor], ...] | None = None


class MemoryBank(nn.Module):
    """``num_chapters`` chapters of ``chapter_size`` latent tokens; full or factorised A·B."""

    def __init__(self, num_tokens: int, chapter_size: int, dim: int, rank: int | None, std: float):
        super().__init__()
        self.chapter_size = chapter_size
        if rank is None:
            self.tokens = nn.Parameter(torch.randn(num_tokens, dim) * std)  # (N, D)
            self.factor_a = self.factor_b = None
        else:
            self.tokens = None
            self.factor_a = nn.Parameter(torch.randn(num_tokens, rank) * std**0.5)  # (N, r)
            self.factor_b = nn.Parameter(torch.randn(rank, dim) * std**0.5)  # (r, D)

    def forward(self) -> torch.Tensor:
        tokens = self.tokens if self.tokens is not None else self.factor_a @ self.factor_b
        return tokens.view(-1, self.chapter_size, tokens.shape[-1])  # (C, S, D)


def _projection(d_in: int, d_out: int, rank: int | None) -> nn.Module:
    if rank is None:
        return nn.Linear(d_in, d_out, bias=False)
    return nn.Sequential(nn.Linear(d_in, rank, bias=False), nn.Linear(rank, d_out, bias=False))


def _last_linear(module: nn.Module) -> nn.Linear:
    return module if isinstance(module, nn.Linear) else module[-1]


class ChapterRouter(nn.Module):
    """Per-sequence router: masked mean-pool → linear → logits ``(B, C)`` in fp32.

    With ``standardised`` the pooled state is centred and scaled per feature first,
    ``(pooled - center) / scale``, both set from the training data before training
    (:meth:`MemoryAdapter.calibrate_routers`; data-dependent init as Glow's ActNorm) and then
    trained. Why: most of a mean-pooled residual state is the same for every sequence (82-86 %
    of its energy at the default memory layers of the tiny base); a random router maps that
    common part to per-chapter offsets larger than the differences between sequences, so every
    sequence picks the same few chapters before training starts (utilisation 0.44-0.56 at step
    0 with the plain mean, 0.99 standardised; docs/memory.md).
    """

    def __init__(self, hidden_size: int, num_chapters: int, pooled: str = "mean"):
        super().__init__()
        self.pooled = pooled
        self.proj = nn.Linear(hidden_size, num_chapters)
        nn.init.normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        if pooled == "standardised":  # identity until calibrated
            self.center = nn.Parameter(torch.zeros(hidden_size))
            self.scale = nn.Parameter(torch.ones(hidden_size))

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The masked mean over positions of ``hidden`` (B, T, H) in fp32 → (B, H)."""
        hidden = hidden.float()  # router logits stay fp32 under autocast
        if mask is None:
            return hidden.mean(dim=1)
        weights = mask.to(hidden.dtype).unsqueeze(-1)  # (B, T, 1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        pooled = self.pool(hidden, mask)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            if self.pooled == "standardised":
                pooled = (pooled - self.center.float()) / self.scale.float().abs().clamp_min(1e-6)
            return F.linear(pooled, self.proj.weight.float(), self.proj.bias.float())  # (B, C)


class MemoryLayer(nn.Module):
    """Router + cross-attention from one decoder block's hidden states to the chosen chapters."""

    def __init__(self, hidden_size: int, memory_dim: int, config: MemoryConfig):
        super().__init__()
        if hidden_size % config.num_heads:
            raise ValueError(
                f"num_heads: {config.num_heads} does not divide the base's hidden size "
                f"{hidden_size}"
            )
        self.num_heads, self.top_k = config.num_heads, config.top_k
        self.router_noise = config.router_noise
        self.router = ChapterRouter(hidden_size, config.num_chapters, config.router_input)
        self.norm = nn.RMSNorm(hidden_size, eps=1e-6)
        rank = config.projection_rank
        self.q_proj = _projection(hidden_size, hidden_size, rank)
        self.k_proj = _projection(memory_dim, hidden_size, rank)
        self.v_proj = _projection(memory_dim, hidden_size, rank)
        self.o_proj = _projection(hidden_size, hidden_size, rank)
        for module in self.modules():
            if isinstance(module, nn.Linear) and module is not self.router.proj:
                nn.init.normal_(module.weight, std=config.init_std)
        nn.init.zeros_(_last_linear(self.o_proj).weight)  # start from the base model exactly

    def forward(
        self,
        hidden: torch.Tensor,
        mask: torch.Tensor | None,
        chapters: torch.Tensor,
        shared: torch.Tensor | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``hidden`` (B, T, H), ``chapters`` (C, S, D), ``shared`` (S', D) → the residual update
        (B, T, H) and ``{"logits": (B, C) fp32, "indices": (B, k), "weights": (B, k)}``."""
        batch, length, width = hidden.shape
        heads, head_dim = self.num_heads, width // self.num_heads
        logits = self.router(hidden, mask)
        probs = logits.softmax(-1)  # (B, C)
        if self.training and self.router_noise > 0:
            # noisy top-k (Shazeer et al. 2017): explore which chapters are picked; the
            # weights and the router losses use the clean probabilities
            noisy = logits.detach() + self.router_noise * torch.randn_like(logits)
            indices = noisy.topk(self.top_k, dim=-1).indices  # (B, k)
            top_probs = probs.gather(-1, indices)
        else:
            top_probs, indices = probs.topk(self.top_k, dim=-1)  # (B, k)
        weights = top_probs / top_probs.sum(-1, keepdim=True)
        query = self.q_proj(self.norm(hidden)).view(batch, length, heads, head_dim)
        keys = self.k_proj(chapters).unflatten(-1, (heads, head_dim))  # (C, S, h, dh)
        values = self.v_proj(chapters).unflatten(-1, (heads, head_dim))
        keys, values = keys[indices], values[indices]  # (B, k, S, h, dh)
        scores = torch.einsum("bthd,bkshd->bhtks", query, keys) / math.sqrt(head_dim)
        read = torch.einsum("bhtks,bkshd->bthkd", scores.softmax(-1), values)  # per chapter
        out = torch.einsum("bthkd,bk->bthd", read, weights.to(read.dtype))
        if shared is not None:
            shared_keys = self.k_proj(shared).unflatten(-1, (heads, head_dim))  # (S', h, dh)
            shared_values = self.v_proj(shared).unflatten(-1, (heads, head_dim))
            shared_scores = torch.einsum("bthd,shd->bhts", query, shared_keys)
            shared_attn = (shared_scores / math.sqrt(head_dim)).softmax(-1)
            out = out + torch.einsum("bhts,shd->bthd", shared_attn, shared_values)
        update = self.o_proj(out.reshape(batch, length, width))
        return update, {"logits": logits, "indices": indices, "weights": weights}


class MemoryAdapter(nn.Module):
    """A causal LM (optionally a ``peft`` model) with Mixture-of-Chapters memory at some layers.

    ``forward(input_ids, attention_mask=None, labels=None, **kwargs)`` returns a
    :class:`MemoryCausalLMOutput` (``loss`` only with ``labels``: the base's shifted CE).
    Parameter names: ``base.*`` (the base, LoRA weights contain ``lora_``) and ``memory.*``.
    """

    def __init__(self, base_model: nn.Module, config: MemoryConfig):
        super().__init__()
        self.base = base_model
        self.memory_config = config
        hf_model = _unwrap(base_model)
        self.config = hf_model.config  # generation and evaluation read config fields
        _, blocks = find_decoder_blocks(hf_model)
        self.layer_indices = config.resolve_layers(len(blocks))
        hidden = int(hf_model.config.get_text_config().hidden_size)
        memory_dim = config.memory_dim or hidden
        self.memory = nn.ModuleDict(
            {
                "bank": MemoryBank(
                    config.num_memory_tokens,
                    config.chapter_size,
                    memory_dim,
                    config.bank_rank,
                    config.init_std,
                ),
                "layers": nn.ModuleDict(
                    {str(i): MemoryLayer(hidden, memory_dim, config) for i in self.layer_indices}
                ),
            }
        )
        if config.shared_chapters:
            self.memory["shared"] = MemoryBank(
                config.shared_chapters * config.chapter_size,
                config.chapter_size,
                memory_dim,
                config.bank_rank,
                config.init_std,
            )
        self.save_dtype = "fp32"  # dtype of save_pretrained's folder: fp32 | fp16 | bf16
        self._call: dict[str, Any] | None = None  # per-forward state the hooks read and fill
        self._hooks = [
            blocks[i].register_forward_hook(_MemoryHook(self, str(i))) for i in self.layer_indices
        ]

    def _apply_memory(self, key: str, output: Any) -> Any:
        """The forward hook of memory layer ``key``: add the memory read to the block output."""
        call = self._call
        if call is None:  # the base called on its own: no memory
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        mask = call["mask"]
        if mask is not None and mask.shape[1] != hidden.shape[1]:
            mask = None  # cached decoding: the mask covers past tokens too
        if "chapters" not in call:
            call["chapters"] = self.memory["bank"]()
            call["shared"] = (
                self.memory["shared"]().flatten(0, 1) if "shared" in self.memory else None
            )
        update, routing = self.memory["layers"][key](hidden, mask, call["chapters"], call["shared"])
        call["routing"].append(routing)
        hidden = hidden + update.to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> MemoryCausalLMOutput:
        self._call = {"mask": attention_mask, "routing": []}
        try:
            out = self.base(
                input_ids=input_ids, attention_mask=attention_mask, labels=labels, **kwargs
            )
            routing = tuple(self._call["routing"][: len(self.layer_indices)])
        finally:
            self._call = None
        return MemoryCausalLMOutput(loss=out.loss, logits=out.logits, routing=routing)

    @property
    def num_chapters(self) -> int:
        return self.memory_config.num_chapters

    @torch.no_grad()
    def calibrate_routers(self, batches: Iterable[dict[str, torch.Tensor]]) -> int:
        """Set each ``standardised`` router's ``center`` / ``scale`` to the mean / std over
        sequences of its pooled input on ``batches``; a no-op for ``mean`` routers.

        All layers are calibrated in one pass: it runs before training, while every ``W_o`` is
        still zero, so no memory layer changes the input of a later one yet.

        Returns:
            The number of sequences used.
        """
        routers = {
            key: layer.router
            for key, layer in self.memory["layers"].items()
            if layer.router.pooled == "standardised"
        }
        if not routers:
            return 0
        pooled: dict[str, list[torch.Tensor]] = {key: [] for key in routers}
        handles = [
            router.register_forward_hook(
                lambda module, args, out, key=key: pooled[key].append(module.pool(*args))
            )
            for key, router in routers.items()
        ]
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        try:
            for batch in batches:
                mask = batch.get("attention_mask")
                self(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=None if mask is None else mask.to(device),
                )
        finally:
            for handle in handles:
                handle.remove()
            self.train(was_training)
        count = 0
        for key, router in routers.items():
            values = torch.cat(pooled[key])  # (N, H)
            count = len(values)
            if count < 2:
                raise ValueError(
                    f"calibrate_routers: {count} sequence(s); the per-feature std needs at least 2"
                )
            router.center.copy_(values.mean(0))
            router.scale.copy_(values.std(0).clamp_min(1e-6))
        return count

    def memory_parameters(self) -> int:
        return sum(p.numel() for p in self.memory.parameters())

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        self.base.gradient_checkpointing_enable(**kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        max_new_tokens: int = 32,
        eos_token_id: int | None = None,
        **_: Any,
    ) -> torch.Tensor:
        """Greedy decoding without a KV cache: each step re-routes on the text so far, the way
        the router saw whole sequences in training. ``input_ids`` (1, T) → (1, T + new)."""
        ids = input_ids
        for _step in range(max_new_tokens):
            logits = self(
                input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False
            ).logits
            next_id = logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, next_id], dim=1)
            if eos_token_id is not None and int(next_id) == eos_token_id:
                break
        return ids

    def save_pretrained(
        self, directory: str | Path, state_dict: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        """The base (LoRA merged into it) as an HF folder, plus the memory weights and config.

        With ``state_dict`` (the engine's ``best/``, possibly trainable-only) those tensors are
        written as ``model.safetensors`` under this module's names, the file the engine's
        ``load_best_model_at_end`` reads back.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        if state_dict is not None:
            from accelerate.utils import clean_state_dict_for_safetensors

            directory.mkdir(parents=True, exist_ok=True)
            tensors = {k: v.contiguous() for k, v in state_dict.items()}
            save_file(
                clean_state_dict_for_safetensors(tensors), str(directory / "model.safetensors")
            )
            (directory / MEMORY_CONFIG_FILE).write_text(
                json.dumps(asdict(self.memory_config), indent=2), encoding="utf-8"
            )
            return
        import copy

        dtype = SAVE_DTYPES[self.save_dtype]
        base = copy.deepcopy(self.base)
        if hasattr(base, "merge_and_unload"):  # a peft model: save the merged weights
            base = base.merge_and_unload()
        base.to(dtype).save_pretrained(str(directory), **kwargs)
        state = {
            k: v.detach().to(dtype).contiguous().cpu() for k, v in self.memory.state_dict().items()
        }
        save_file(state, str(directory / MEMORY_WEIGHTS_FILE))
        (directory / MEMORY_CONFIG_FILE).write_text(
            json.dumps(asdict(self.memory_config), indent=2), encoding="utf-8"
        )


class _MemoryHook:
    """A block's forward hook; an object (not a closure) so that ``copy.deepcopy`` of the
    adapter gives hooks that call the copy, not the original."""

    def __init__(self, adapter: MemoryAdapter, key: str) -> None:
        self.adapter, self.key = adapter, key

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        return self.adapter._apply_memory(self.key, output)


def _unwrap(model: nn.Module) -> nn.Module:
    """The transformers model inside a ``peft`` wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def load_memory_model(directory: Path, trust_remote_code: bool = False) -> MemoryAdapter:
    """The ``memory`` family loader (:data:`~router_pipelines.models.bundle.FAMILY_LOADERS`)."""
    from safetensors.torch import load_file

    from router_pipelines.models.bundle import load_causal_lm
    from router_pipelines.models.hf_files import read_json_file

    directory = Path(directory)
    config = config_from_dict(
        MemoryConfig, read_json_file(directory / MEMORY_CONFIG_FILE), MEMORY_CONFIG_FILE
    )
    base = load_causal_lm(directory, trust_remote_code)
    model = MemoryAdapter(base, config)
    model.memory.to(next(base.parameters()).dtype)  # saved at the base's precision
    state = load_file(str(directory / MEMORY_WEIGHTS_FILE))
    missing, unexpected = model.memory.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{directory / MEMORY_WEIGHTS_FILE}: does not fit {MEMORY_CONFIG_FILE}: "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    return model.eval()


def freeze_base(model: MemoryAdapter, train_base: bool) -> None:
    """Freeze the base's own weights unless ``train_base``; LoRA weights stay trainable."""
    check_bool("train_base", train_base)
    for name, param in model.base.named_parameters():
        if "lora_" not in name:
            param.requires_grad_(train_base)


@dataclass
class LoraSettings:
    """LoRA on the base through ``peft`` (``memory.lora.<field>``)."""

    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None = peft's default for the architecture

    def __post_init__(self) -> None:
        check_bool("enabled", self.enabled)
        check_int("r", self.r, minimum=1)
        check_int("alpha", self.alpha, minimum=1)
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout: expected a number in [0, 1), got {self.dropout!r}")


def apply_lora(base: nn.Module, settings: LoraSettings) -> nn.Module:
    """``base`` wrapped by ``peft.get_peft_model`` (its own weights frozen), or as is."""
    if not settings.enabled:
        return base
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(base, config)
