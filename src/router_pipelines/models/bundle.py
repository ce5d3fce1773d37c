"""A model together with its tokenizer, saved as one ``from_pretrained``-loadable folder.

``router_pipelines.json`` in the folder names the model's family; :data:`FAMILY_LOADERS` maps
each family to the function that rebuilds its model, written ``"module:attribute"`` and
imported only when a folder of that family is loaded (loading a plain causal LM never imports
the switchable code). A new family adds one entry.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router_pipelines.models.hf_files import load_hf_config, read_json_file

if TYPE_CHECKING:  # torch is imported by the loaders that need it, not by listing a catalog
    from torch import nn

BUNDLE_FILE = "router_pipelines.json"  # which family the folder holds, plus free-form metadata
DEFAULT_FAMILY = "causal_lm"  # a folder without BUNDLE_FILE: any transformers causal LM

# family -> "module:callable"; the callable is ``loader(directory, trust_remote_code) -> model``.
FAMILY_LOADERS: dict[str, str] = {
    "causal_lm": "router_pipelines.models.bundle:load_causal_lm",
    "depth_routing": "router_pipelines.models.depth_routing_lm:load_depth_routing_model",
    "switchable": "router_pipelines.models.switchable_io:load_switchable_model",
    "memory": "router_pipelines.models.memory:load_memory_model",
    "query_router": "router_pipelines.models.query_router:load_query_router",
    "precision_router": "router_pipelines.models.precision_router:load_precision_router",
}

ModelLoader = Callable[[Path, bool], "nn.Module"]


@dataclass
class ModelBundle:
    """A trained model, its tokenizer and metadata (family, training summary)."""

    model: nn.Module
    tokenizer: Any
    metadata: dict[str, Any] = field(default_factory=dict)
    # The folder it was loaded from (None for a model built in this process). A versioned
    # dataset does not write a bundle back into the folder tree it was loaded from.
    source_dir: str | None = field(default=None, compare=False)

    @property
    def family(self) -> str:
        return self.metadata.get("family", DEFAULT_FAMILY)


def save_bundle(bundle: ModelBundle, directory: Path) -> None:
    """Write model (safetensors), tokenizer and ``router_pipelines.json`` into ``directory``.

    A plain write into the given folder: callers that need the folder to appear whole (the
    versioned ``PretrainedModelDataset``) write into a temporary one and publish it with
    ``router_pipelines.storage.atomic_directory``.

    Raises:
        ValueError: the bundle's family has no loader, so the folder could not be loaded back.
    """
    loader_for(bundle.family)  # refuse to write what load_bundle could not read
    directory = Path(directory)
    bundle.model.save_pretrained(str(directory))
    bundle.tokenizer.save_pretrained(str(directory))
    metadata = {"family": bundle.family, **bundle.metadata}
    (directory / BUNDLE_FILE).write_text(
        json.dumps(metadata, indent=2, sort_keys=True, default=str), encoding="utf-8"
    )


def load_bundle(directory: Path, trust_remote_code: bool = False) -> ModelBundle:
    """Load a folder written by :func:`save_bundle` (or any HF causal-LM folder).

    Raises:
        ValueError: an unknown family (listing the known ones), or a metadata / config file
            that does not parse or fit, naming the file and the key.
    """
    from router_pipelines.data.tokenizer import load_saved_tokenizer

    directory = Path(directory)
    meta_file = directory / BUNDLE_FILE
    metadata = read_json_file(meta_file) if meta_file.is_file() else {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{meta_file}: expected a JSON object, got {type(metadata).__name__}")
    family = metadata.get("family", DEFAULT_FAMILY)
    try:
        loader = loader_for(family)
    except ValueError as err:
        raise ValueError(f"{meta_file}: {err}") from None
    model = loader(directory, trust_remote_code)
    # The saved tokenizer class, not the one AutoTokenizer derives from config.json's model type:
    # a qwen2 folder would come back as a Qwen2Tokenizer with an added unk token, another
    # tokenizer than the one saved (its digest differs, and promotion refuses to re-score it).
    tokenizer = load_saved_tokenizer(directory, trust_remote_code=trust_remote_code)
    return ModelBundle(
        model=model, tokenizer=tokenizer, metadata=metadata, source_dir=str(directory.resolve())
    )


def loader_for(family: Any) -> ModelLoader:
    """The loader registered for ``family`` in :data:`FAMILY_LOADERS`, imported now.

    Raises:
        ValueError: ``family`` is not registered, listing the known families.
    """
    target = FAMILY_LOADERS.get(family) if isinstance(family, str) else None
    if target is None:
        raise ValueError(
            f"family: unknown model family {family!r}; known families are {sorted(FAMILY_LOADERS)}"
        )
    module_name, _, attribute = target.partition(":")
    loader: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        loader = getattr(loader, part)
    return loader


def load_causal_lm(directory: Path, trust_remote_code: bool = False) -> nn.Module:
    """The ``causal_lm`` loader: ``AutoModelForCausalLM.from_pretrained`` on local files, with
    the config read first so a bad ``config.json`` is named with its key."""
    from transformers import AutoModelForCausalLM

    config = load_hf_config(directory, trust_remote_code=trust_remote_code)
    return AutoModelForCausalLM.from_pretrained(
        str(directory), config=config, trust_remote_code=trust_remote_code, local_files_only=True
    )
