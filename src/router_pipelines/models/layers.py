"""Where a causal LM keeps its decoder blocks: one discovery for every model family.

Every family that acts per block (switchable precision per layer, a per-layer precision
router, token routing, layer dropping) finds the blocks with :func:`find_decoder_blocks`, so
a new architecture is taught to all of them at once by adding its path to
:data:`BLOCK_PATHS`.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from router_pipelines.config import check_int

# Dotted paths of the block list in the transformers layouts this project builds or loads:
# GPT-2 (``transformer.h``), Llama / Qwen2 / Mistral (``model.layers``), OPT
# (``model.decoder.layers``), GPT-NeoX (``gpt_neox.layers``).
BLOCK_PATHS = ("transformer.h", "model.layers", "model.decoder.layers", "gpt_neox.layers")

# Per-block keys of a layer-wise precision assignment: ``{"attn_bits": 8, "mlp_bits": 4}``.
LAYER_KEYS = ("attn_bits", "mlp_bits")


def find_decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The qualified name and the ``nn.ModuleList`` of ``model``'s decoder blocks.

    Tries the known layouts (:data:`BLOCK_PATHS`) on ``model`` and on a wrapper's ``.model``
    (e.g. ``SwitchableLM``, whose name then starts with ``model.``), then falls back to the
    first ``nn.ModuleList`` in module order whose length is ``config.num_hidden_layers``.

    Raises:
        ValueError: no block list found, naming the model type.
    """
    for prefix, root in (("", model), ("model.", getattr(model, "model", None))):
        if not isinstance(root, nn.Module):
            continue
        for path in BLOCK_PATHS:
            blocks = _get_path(root, path)
            if isinstance(blocks, nn.ModuleList):
                return prefix + path, blocks
    num_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if num_layers:
        for name, module in model.named_modules():
            if isinstance(module, nn.ModuleList) and len(module) == num_layers:
                return name, module
    raise ValueError(
        f"model: found no decoder blocks in {type(model).__name__}: none of {list(BLOCK_PATHS)} "
        f"is an nn.ModuleList, nor is any nn.ModuleList of config.num_hidden_layers={num_layers} "
        "modules"
    )


def keep_first_layers(model: nn.Module, n_layer: int) -> None:
    """Drop, in place, every decoder block after the first ``n_layer``.

    The config follows (``num_hidden_layers``, GPT-2's ``n_layer`` alias, and per-layer lists
    such as Qwen2's ``layer_types``), so the truncated model saves and reloads as itself.

    Raises:
        ValueError: ``n_layer`` is not an int >= 1 or exceeds the model's blocks.
    """
    check_int("n_layer", n_layer, minimum=1)
    name, blocks = find_decoder_blocks(model)
    if n_layer > len(blocks):
        raise ValueError(f"n_layer: {n_layer} exceeds the model's {len(blocks)} layers")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, nn.ModuleList(list(blocks)[:n_layer]))
    config = getattr(model, "config", None)
    if config is None:
        return
    if hasattr(config, "num_hidden_layers"):
        config.num_hidden_layers = n_layer  # GPT2Config maps it onto n_layer
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list | tuple):  # validated against num_hidden_layers on load
        config.layer_types = list(layer_types)[:n_layer]


def _get_path(root: nn.Module, path: str) -> Any:
    node: Any = root
    for part in path.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node
