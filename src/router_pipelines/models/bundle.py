"""A model together with its tokenizer, saved as one ``from_pretrained``-loadable folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

BUNDLE_FILE = "router_pipelines.json"  # which family the folder holds, plus free-form metadata


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
        return self.metadata.get("family", "causal_lm")


def save_bundle(bundle: ModelBundle, directory: Path) -> None:
    """Write model (safetensors), tokenizer and ``router_pipelines.json`` into ``directory``."""
    directory = Path(directory)
    bundle.model.save_pretrained(str(directory))
    bundle.tokenizer.save_pretrained(str(directory))
    metadata = {"family": bundle.family, **bundle.metadata}
    (directory / BUNDLE_FILE).write_text(
        json.dumps(metadata, indent=2, sort_keys=True, default=str)
    )


def load_bundle(directory: Path, trust_remote_code: bool = False) -> ModelBundle:
    """Load a folder written by :func:`save_bundle` (or any HF causal-LM folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = Path(directory)
    meta_file = directory / BUNDLE_FILE
    metadata = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    family = metadata.get("family", "causal_lm")
    if family == "switchable":
        from router_pipelines.models.switchable import SwitchableLM

        model = SwitchableLM.from_pretrained(str(directory))
    elif family == "causal_lm":
        model = AutoModelForCausalLM.from_pretrained(
            str(directory), trust_remote_code=trust_remote_code
        )
    else:
        raise ValueError(
            f"{meta_file}: unknown family {family!r}; expected causal_lm or switchable"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(directory), trust_remote_code=trust_remote_code)
    return ModelBundle(
        model=model, tokenizer=tokenizer, metadata=metadata, source_dir=str(directory.resolve())
    )
