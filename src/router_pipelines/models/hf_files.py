"""Reading the JSON files of a saved model folder with errors that name the file and the key."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"


def read_json_file(path: str | Path) -> Any:
    """The parsed JSON at ``path``.

    Raises:
        FileNotFoundError: ``path`` is missing.
        ValueError: ``path`` is not valid JSON, naming the file, line and column.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def load_hf_config(directory: str | Path, *, trust_remote_code: bool = False) -> Any:
    """The transformers ``PretrainedConfig`` saved in ``directory`` (local files only).

    transformers 5 validates config fields strictly (``"n_embd": "abc"`` raises
    ``StrictDataclassFieldValidationError: Validation error for field 'n_embd'``) but the
    message names neither the folder nor the file; this re-raises it naming both.

    Raises:
        FileNotFoundError: no ``config.json`` in ``directory``.
        ValueError: ``"<directory>/config.json: <what is wrong, naming the key>"``.
    """
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    config_file = Path(directory) / CONFIG_NAME
    read_json_file(config_file)  # a missing file or broken JSON is named before transformers
    try:
        return AutoConfig.from_pretrained(
            str(directory), trust_remote_code=trust_remote_code, local_files_only=True
        )
    except (StrictDataclassError, ValueError, TypeError, KeyError, OSError) as err:
        detail = " ".join(str(err).split())  # one line: the strict-dataclass message has breaks
        raise ValueError(f"{config_file}: {detail}") from err
