"""What the memory family brings to the engine: router losses, the loss, utilisation metrics.

Router auxiliary losses of one memory layer, for ``C`` chapters, ``B`` sequences and top-k picks
(seed 002's table; logits in fp32):

* load balance ``C · Σ_i f_i · P_i`` (Switch Transformer) with ``f_i`` the share of the
  ``B·k`` top-k picks that went to chapter ``i`` and ``P_i`` its mean router probability;
  ``Σ f_i = 1``, so uniform routing gives exactly 1 for any k;
* auxiliary ``Σ_i (f_i − 1/C)²``: 0 exactly when the picks are uniform;
* z-loss ``mean_b (log Σ_i exp(logits_bi))²`` (ST-MoE).

``f`` counts discrete picks (no gradient); the load-balance gradient flows through ``P``.
:func:`compute_router_auxiliary_loss` averages each part over the memory layers and weights
them by the coefficients (defaults 0.01, 0.0, 0.001, as the seed).

Utilisation over an evaluation set: ``f`` from all picks of all sequences, per layer; the
entropy ``H(f) / log C`` (1 = uniform), the chapters never picked and the top-1 share
(the most used chapter's share of the picks), then the mean over layers (dead chapters: the
sum over layers).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from router_pipelines.constants import IGNORE_INDEX

LOSS_PARTS = ("load_balance", "auxiliary", "z_loss")
DEFAULT_COEFS = {"load_balance": 0.01, "auxiliary": 0.0, "z_loss": 0.001}


def chapter_fractions(indices: torch.Tensor, num_chapters: int) -> torch.Tensor:
    """``f``: the share of top-k picks ``indices`` (B, k) per chapter, ``(C,)`` summing to 1."""
    counts = torch.bincount(indices.reshape(-1), minlength=num_chapters).float()
    return counts / counts.sum().clamp_min(1.0)


def router_losses(logits: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """The three router losses of one layer from its logits ``(B, C)`` and picks ``(B, k)``."""
    logits = logits.float()
    num_chapters = logits.shape[-1]
    fractions = chapter_fractions(indices, num_chapters)  # (C,), no gradient
    mean_probs = logits.softmax(-1).mean(0)  # (C,)
    return {
        "load_balance": num_chapters * (fractions * mean_probs).sum(),
        "auxiliary": ((fractions - 1.0 / num_chapters) ** 2).sum(),
        "z_loss": torch.logsumexp(logits, dim=-1).pow(2).mean(),
    }


def compute_router_auxiliary_loss(
    router_losses: Sequence[Mapping[str, torch.Tensor]],
    load_balance_coef: float = 0.01,
    auxiliary_coef: float = 0.0,
    z_loss_coef: float = 0.001,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Aggregate the router losses of every memory layer (seed 002's ``compute_router_auxiliary_loss``).

    Each part is averaged over the layers (so a coefficient does not scale with the number of
    memory layers), then ``total = lb_coef · LB + aux_coef · AUX + z_coef · Z``. A missing part
    counts as 0.

    Returns:
        ``(total, {"load_balance", "auxiliary", "z_loss"})`` with the layer means (detached).

    Raises:
        ValueError: no layer's losses, or a negative coefficient.
    """
    if not router_losses:
        raise ValueError("router_losses: no memory layer's router losses given")
    coefs = {"load_balance": load_balance_coef, "auxiliary": auxiliary_coef, "z_loss": z_loss_coef}
    for name, value in coefs.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
            raise ValueError(f"{name}_coef: expected a number >= 0, got {value!r}")
    means: dict[str, torch.Tensor] = {}
    for part in LOSS_PARTS:
        values = [torch.as_tensor(layer[part]).float() for layer in router_losses if part in layer]
        means[part] = torch.stack(values).sum() / len(router_losses) if values else torch.zeros(())
    total = sum(coefs[part] * means[part] for part in LOSS_PARTS if coefs[part])
    if not isinstance(total, torch.Tensor):
        total = torch.zeros((), device=means["load_balance"].device)
    return total, {part: value.detach() for part, value in means.items()}


def make_memory_loss(coefs: Mapping[str, float] | None = None):
    """``loss_fn(model, batch, step)`` for a :class:`MemoryAdapter`: CE + router auxiliary loss.

    Metrics: ``ce``, ``router_aux_loss``, ``load_balance``, ``auxiliary``, ``z_loss``,
    ``tokens`` (the engine logs them as ``train_<m>`` / ``eval_<m>``).
    """
    coefs = {**DEFAULT_COEFS, **(coefs or {})}

    def memory_loss(model: Any, batch: dict[str, torch.Tensor], step: int):
        del step
        out = model(**batch)
        logits = out.logits[:, :-1].float()
        targets = batch["labels"][:, 1:]
        ce = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
        )
        layers = [router_losses(r["logits"], r["indices"]) for r in out.routing]
        aux, parts = compute_router_auxiliary_loss(
            layers, coefs["load_balance"], coefs["auxiliary"], coefs["z_loss"]
        )
        metrics = {"ce": ce.detach(), "router_aux_loss": aux.detach(), **parts}
        metrics["tokens"] = (targets != IGNORE_INDEX).sum()
        return ce + aux, metrics

    return memory_loss


def utilisation(chapter_counts: torch.Tensor) -> dict[str, float]:
    """Utilisation metrics from per-layer pick counts ``(L, C)``.

    Returns:
        ``utilisation_entropy`` (mean over layers of H(f)/log C), ``utilisation_entropy_min``,
        ``dead_chapters`` (chapters never picked, summed over layers), ``top1_share`` (mean
        over layers of the most used chapter's share of the picks).
    """
    counts = chapter_counts.double()
    num_chapters = counts.shape[-1]
    fractions = counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    logs = torch.where(fractions > 0, fractions.log(), torch.zeros_like(fractions))
    entropy = -(fractions * logs).sum(-1) / math.log(num_chapters) if num_chapters > 1 else None
    if entropy is None:
        entropy = torch.ones(counts.shape[0], dtype=counts.dtype)
    return {
        "utilisation_entropy": float(entropy.mean()),
        "utilisation_entropy_min": float(entropy.min()),
        "dead_chapters": int((counts == 0).sum()),
        "top1_share": float(fractions.max(-1).values.mean()),
    }


@torch.no_grad()
def count_chapter_picks(model: Any, loader: Any, max_batches: int | None = None) -> torch.Tensor:
    """Pick counts ``(L, C)`` of ``model`` (a MemoryAdapter, possibly DDP-wrapped) over ``loader``."""
    inner = getattr(model, "module", model)
    counts = None
    for number, batch in enumerate(loader):
        if max_batches is not None and number >= max_batches:
            break
        device = next(inner.parameters()).device
        out = model(
            input_ids=batch["input_ids"].to(device),
            attention_mask=batch["attention_mask"].to(device),
        )
        picks = torch.stack(
            [
                torch.bincount(r["indices"].reshape(-1), minlength=inner.num_chapters)
                for r in out.routing
            ]
        )
        counts = picks if counts is None else counts + picks
    if counts is None:
        counts = torch.zeros(len(inner.layer_indices), inner.num_chapters, dtype=torch.long)
    return counts


def utilisation_callback(eval_set: str = "eval", max_batches: int | None = None, on_counts=None):
    """An engine eval callback logging :func:`utilisation` over the eval set ``eval_set``.

    Counts are summed over processes (``accelerator.reduce``). ``on_counts(counts, step)`` is
    called on every process with the reduced ``(L, C)`` counts (e.g. to draw the histogram).
    """

    def callback(model: Any, accelerator: Any, loaders: Mapping[str, Any], step: int):
        counts = count_chapter_picks(model, loaders[eval_set], max_batches)
        counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum").cpu()
        if on_counts is not None:
            on_counts(counts, step)
        return utilisation(counts)

    return callback


def chapter_usage_figure(counts: Any, layer_indices: Sequence[int], title: str) -> Any:
    """A bar chart of each memory layer's share of picks per chapter (matplotlib object API).

    The legend (above the axes, so it never covers a bar) gives each layer's utilisation
    entropy and its count of chapters never picked, which are marked with an ``x`` on the axis.
    """
    import numpy as np
    from matplotlib.figure import Figure

    counts = np.asarray(counts, dtype=float)
    shares = counts / np.maximum(counts.sum(-1, keepdims=True), 1.0)
    layers, chapters = shares.shape
    per_layer = [utilisation(torch.as_tensor(row[None])) for row in counts]
    figure = Figure(
        figsize=(min(12.0, max(5.5, 0.35 * chapters * max(layers, 1) ** 0.5 + 2.5)), 4.0)
    )
    axis = figure.subplots()
    width = 0.8 / max(layers, 1)
    positions = np.arange(chapters)
    for row, layer in enumerate(layer_indices):
        usage = per_layer[row]
        label = (
            f"layer {layer}: H/log C = {usage['utilisation_entropy']:.2f}, "
            f"{usage['dead_chapters']} unused"
        )
        x = positions + row * width
        bars = axis.bar(x, shares[row], width, label=label)
        dead = shares[row] == 0
        if dead.any():  # a zero-height bar is invisible: mark the chapters never picked
            axis.plot(x[dead], np.zeros(int(dead.sum())), "x", color=bars.patches[0].get_facecolor(),
                      markersize=7, markeredgewidth=2, clip_on=False)  # fmt: skip
    axis.axhline(1.0 / chapters, color="grey", linestyle="--", linewidth=1, label="uniform (1/C)")
    step = max(1, chapters // 32)  # at most ~32 tick labels
    axis.set_xticks(
        (positions + 0.4 - width / 2)[::step], [str(c) for c in range(0, chapters, step)]
    )
    axis.set_xlim(-0.6, chapters - 0.2)
    axis.set_ylim(0, max(float(shares.max()) * 1.1, 1.5 / chapters))
    axis.set_xlabel("chapter")
    axis.set_ylabel("share of top-k picks")
    axis.set_title(title, pad=8 + 14 * ((layers + 2) // 2))
    axis.legend(fontsize=8, ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    figure.tight_layout()
    return figure
