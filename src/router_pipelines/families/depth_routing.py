"""What token routing over depth (MoD, DTF) brings to the engine: its loss, router statistics
and analytic FLOPs.

Loss = CE + router_aux_weight · BCE(router logits, top-k membership)   (MoD)
          + predictor_weight · BCE(predictor logits, top-k membership)  (both; the predictor
            reads stop-gradient inputs, so this term trains only the predictor)
          + prior_loss_weight · MSE(prior, stopgrad(posterior))         (DTF)

Each term is the mean over routed blocks (and tokens). Metrics per step: the terms, the
predictor's accuracy, the share of tokens computed, and for DTF the mean S_CE and S_CU.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from router_pipelines.models.depth_routing import RoutingRecord, capacity
from router_pipelines.models.dtf import DTFPair, prior_ffn_width
from router_pipelines.models.mod import MoDBlock
from router_pipelines.training import combine_losses
from router_pipelines.training.losses import IGNORE_INDEX

LossFn = Callable[[nn.Module, dict[str, torch.Tensor], int], tuple[torch.Tensor, dict]]


def routing_records(model: nn.Module) -> list[RoutingRecord]:
    """The last forward's record of every routed block (a DDP-wrapped model works too)."""
    return [m.last for m in model.modules() if isinstance(m, MoDBlock | DTFPair) and m.last]


def auxiliary_terms(records: list[RoutingRecord]) -> dict[str, torch.Tensor]:
    """The auxiliary loss terms (means over blocks) of one forward."""
    terms: dict[str, torch.Tensor] = {}
    predictor = [
        F.binary_cross_entropy_with_logits(r.predictor_logits, r.topk_target.float())
        for r in records
    ]
    terms["predictor_bce"] = torch.stack(predictor).mean()
    if records and "prior" in records[0].extras:
        prior = [F.mse_loss(r.extras["prior"], r.extras["posterior"].detach()) for r in records]
        terms["prior_mse"] = torch.stack(prior).mean()
    else:
        router = [
            F.binary_cross_entropy_with_logits(r.router_logits, r.topk_target.float())
            for r in records
        ]
        terms["router_bce"] = torch.stack(router).mean()
    return terms


def record_metrics(records: list[RoutingRecord]) -> dict[str, torch.Tensor]:
    """Detached statistics: predictor accuracy on top-k membership, share of tokens computed,
    and (DTF) mean S_CE / S_CU."""
    with torch.no_grad():
        accuracy = torch.stack(
            [((r.predictor_logits > 0) == r.topk_target).float().mean() for r in records]
        )
        metrics = {
            "predictor_accuracy": accuracy.mean(),
            "routed_share": torch.stack([r.selected.float().mean() for r in records]).mean(),
        }
        if records and "s_ce" in records[0].extras:
            metrics["s_ce"] = torch.stack([r.extras["s_ce"].mean() for r in records]).mean()
            metrics["s_cu"] = torch.stack([r.extras["s_cu"].mean() for r in records]).mean()
    return metrics


def make_depth_routing_loss(weights: Mapping[str, float]) -> LossFn:
    """The training loss: CE plus the weighted auxiliary terms (see the module docstring).

    Args:
        weights: ``router_bce``, ``predictor_bce``, ``prior_mse`` weights (missing: 0).
    """

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], step: int):
        del step
        output = model(**batch)
        records = routing_records(model)
        terms = {"ce": output.loss, **auxiliary_terms(records)}
        used = {name: float(weights.get(name, 0.0)) for name in terms if name != "ce"}
        total, metrics = combine_losses(terms, used)
        metrics.update(record_metrics(records))
        metrics["tokens"] = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
        return total, metrics

    return loss_fn


def eval_loss(model: nn.Module, batch: dict[str, torch.Tensor], step: int):
    """Evaluation: the LM cross-entropy (comparable with the dense model's ``eval_loss``),
    with the router statistics as metrics."""
    del step
    output = model(**batch)
    metrics = record_metrics(routing_records(model))
    metrics["tokens"] = (batch["labels"][:, 1:] != IGNORE_INDEX).sum()
    return output.loss, metrics


def routing_statistics(
    model: Any, dataset: Any, batch_size: int, max_batches: int | None
) -> dict[str, Any]:
    """Per routed block, on validation data: the accuracy of the causal decision (logit above
    the calibrated threshold; ``_at_0``: above 0, the BCE classifier's own cut) on top-k
    membership, the share of tokens computed with causal routing (what generation does), and
    for DTF the mean S_CE and S_CU.

    Returns:
        ``{"layers": [{"layer", "predictor_accuracy", "causal_share", "topk_share", ...}],
        "predictor_accuracy": mean, "causal_share": mean}``.
    """
    from torch.utils.data import DataLoader

    device = next(model.parameters()).device
    layers = model.routed_layer_indices()
    sums: list[dict[str, float]] = [dict.fromkeys(_STAT_KEYS, 0.0) for _ in layers]
    batches = 0
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(dataset, batch_size=batch_size):
            if max_batches is not None and batches >= max_batches:
                break
            ids = batch["input_ids"].to(device)
            with model.routing_mode_as("topk"):
                model(input_ids=ids)
            topk = routing_records(model)
            with model.routing_mode_as("causal"):
                model(input_ids=ids)
            causal = routing_records(model)
            modules = model.routed_modules()
            for acc, top, cau, module in zip(sums, topk, causal, modules, strict=True):
                # the decision generation takes (calibrated threshold) against top-k membership
                decision = module.routing.causal_logits(top) > module.routing.causal_threshold
                acc["predictor_accuracy"] += float((decision == top.topk_target).float().mean())
                acc["predictor_accuracy_at_0"] += float(
                    ((top.predictor_logits > 0) == top.topk_target).float().mean()
                )
                acc["topk_share"] += float(top.selected.float().mean())
                acc["causal_share"] += float(cau.selected.float().mean())
                acc["s_ce"] += float(top.extras["s_ce"].mean()) if "s_ce" in top.extras else 0.0
                acc["s_cu"] += float(top.extras["s_cu"].mean()) if "s_cu" in top.extras else 0.0
            batches += 1
    dtf = model.routing_config.model_type == "dtf"
    rows = []
    for layer, acc in zip(layers, sums, strict=True):
        row = {"layer": layer, **{k: v / max(batches, 1) for k, v in acc.items()}}
        if not dtf:
            row.pop("s_ce"), row.pop("s_cu")
        rows.append(row)
    mean = {
        key: sum(row[key] for row in rows) / len(rows)
        for key in ("predictor_accuracy", "causal_share", "topk_share")
    }
    return {"layers": rows, **mean, "batches": batches}


_STAT_KEYS = (
    "predictor_accuracy",
    "predictor_accuracy_at_0",
    "topk_share",
    "causal_share",
    "s_ce",
    "s_cu",
)


def flops_per_token(hf_config: Any, routing: Any | None, seq_len: int) -> dict[str, float]:
    """Forward FLOPs per token, analytic (a multiply-add = 2 FLOPs).

    A block: 2·(2d² + 2d·d_kv + 3dI) for its matmuls plus 4·T·d for attention over T keys
    (full context; causal masking is not discounted). A routed block at capacity γ computes
    γ of the tokens over a γT context, plus its router (2d) and predictor
    (2(dh + h)); a DTF Decision layer adds the prior FFN (4dm) and computes every token.
    The LM head (2Vd) is reported apart; embeddings are a lookup (0 FLOPs).

    Returns:
        ``blocks``, ``lm_head``, ``embeddings``, ``total`` (= blocks + lm_head) and
        ``block_dense`` (one unrouted block).
    """
    d = hf_config.hidden_size
    heads = hf_config.num_attention_heads
    kv = getattr(hf_config, "num_key_value_heads", heads) * (d // heads)
    inter = hf_config.intermediate_size
    layers = hf_config.num_hidden_layers
    matmul = 2 * (2 * d * d + 2 * d * kv + 3 * d * inter)

    def block(context: float) -> float:
        return matmul + 4 * context * d

    dense_block = block(seq_len)
    blocks = layers * dense_block
    if routing is not None:
        gamma = capacity(routing.capacity_gamma, seq_len) / seq_len
        extra = 2 * d + 2 * (d * routing.predictor_hidden_size + routing.predictor_hidden_size)
        routed = gamma * block(gamma * seq_len) + extra
        if routing.model_type == "mod":
            count = len(routing.layers_to_route(layers))
            blocks = (layers - count) * dense_block + count * routed
        else:
            # the PriorFFN: a SwiGLU, three d x width matmuls
            prior = 6 * d * prior_ffn_width(d, routing.dtf.prior_ffn_intermediate_size_factor)
            pairs = len(routing.dtf_pairs(layers))
            blocks = pairs * (dense_block + prior + routed)
    lm_head = 2 * hf_config.vocab_size * d
    return {
        "blocks": float(blocks),
        "lm_head": float(lm_head),
        "embeddings": 0.0,
        "total": float(blocks + lm_head),
        "block_dense": float(dense_block),
    }


def measure_speed(
    model: nn.Module,
    vocab_size: int,
    seq_len: int,
    batch_size: int = 4,
    iters: int = 3,
    decode_tokens: int = 32,
    prompt_len: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """Median training-step time (forward + backward, no optimizer) on random ids and greedy
    generation speed (KV cache; routed models route causally) of ``model``, on its device.

    Returns:
        ``train_step_s``, ``train_tokens_per_s``, ``generate_tokens_per_s``.
    """
    import statistics
    import time

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator).to(device)
    was_training = model.training
    model.train()
    times = []
    for _ in range(iters + 1):  # the first is a warm-up
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        _sync(device)
        times.append(time.perf_counter() - start)
    model.zero_grad(set_to_none=True)
    model.eval()
    prompt = ids[:1, :prompt_len]
    decode = []
    with torch.no_grad():
        for _ in range(max(1, iters // 2) + 1):
            start = time.perf_counter()
            model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=decode_tokens,
                min_new_tokens=decode_tokens,
                do_sample=False,
                pad_token_id=0,
            )
            _sync(device)
            decode.append(time.perf_counter() - start)
    model.train(was_training)
    step = statistics.median(times[1:])
    return {
        "train_step_s": step,
        "train_tokens_per_s": batch_size * seq_len / step,
        "generate_tokens_per_s": decode_tokens / statistics.median(decode[1:]),
    }


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
