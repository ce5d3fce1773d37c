"""Router prompts and training examples, and the seed's JSONL format (seed 004).

A router example is the seed's ``ROLE:\\ncontent\\n\\n`` concatenation of a system instruction,
a user turn ``[Question]\\n<question>\\n\\nPrediction:\\n`` and an ``ASSISTANT:\\n`` header; the
label token ``[[n]]`` follows directly, so the answer position is the prompt's last token and
the loss covers the label token only. (The seed's inference prompt leaves the assistant
header out and samples; reading the label right after the header is what training teaches.)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router_pipelines.constants import IGNORE_INDEX
from router_pipelines.models.query_router_labels import LABEL_TOKENS

SEED_SYSTEM_INSTRUCTION = (
    "[Instruction]\nBased on the question provided below, predict the score an expert evaluator "
    "would give to an AI assistant's response, considering its helpfulness, relevance, adherence "
    "to facts, depth, creativity, and detail. Your prediction should infer the level of "
    "proficiency needed to address the question effectively. Use a scale from 1 to 5, where a "
    "higher score indicates a higher anticipated quality of response. Provide your prediction "
    'as: "[[predicted rating]]".\n\n'
    "Score criteria:\n"
    "- **4-5**: The AI assistant can produce a very strong answer, showing deep understanding, "
    "creativity, detailed insight, and high relevance.\n"
    "- **3**: The AI assistant can provide an adequate answer with moderate detail, relevance, "
    "and factual accuracy.\n"
    "- **1-2**: The AI assistant will struggle to produce a strong answer due to the question's "
    "difficulty, vagueness, or the assistant's limitations.\n"
)
SEED_USER_TEMPLATE = "[Question]\n{question}\n\nPrediction:\n"
MODEL_FIELD = "{model}"  # a user template naming the rung, needed for a ladder of > 2 models
_LABEL = re.compile(r"^\s*\[\[(\d+)\]\]\s*$")


@dataclass
class PromptConfig:
    """``query_router.prompt``: the router's instruction and user turn."""

    system_instruction: str = "seed"  # "seed": the seed's instruction, else the text itself
    user_template: str = SEED_USER_TEMPLATE  # {question} and, for a ladder, {model}

    def __post_init__(self) -> None:
        if "{question}" not in self.user_template:
            raise ValueError(
                f"user_template: {self.user_template!r} has no {{question}} field; e.g. "
                f"{SEED_USER_TEMPLATE!r}"
            )

    @property
    def system(self) -> str:
        return (
            SEED_SYSTEM_INSTRUCTION
            if self.system_instruction == "seed"
            else self.system_instruction
        )


def concat_messages(messages: Sequence[dict[str, str]]) -> str:
    """The seed's ``concat_messages``: ``f"{ROLE}:\\n{content}\\n\\n"`` for each message."""
    return "".join(f"{m['role'].upper()}:\n{m['content']}\n\n" for m in messages)


def router_prompt(question: str, config: PromptConfig, model: str | None = None) -> str:
    """The text the router reads; its next token is the label."""
    user = config.user_template.replace("{question}", question)
    if model is not None:
        user = user.replace(MODEL_FIELD, model)
    messages = [{"role": "system", "content": config.system}, {"role": "user", "content": user}]
    return concat_messages(messages) + "ASSISTANT:\n"


def label_token(score: int) -> str:
    return LABEL_TOKENS[int(score) - 1]


# --- the seed's JSONL format ------------------------------------------------------------------


def read_seed_records(path: str | Path, n_sample: int | None = 1000, random_state: int = 42):
    """The seed's ``prepare_subsampled_dataset``: the JSONL file, ``n_sample`` rows drawn with
    ``DataFrame.sample(random_state=42)`` (all rows when ``n_sample`` is null), each checked.

    Returns:
        A DataFrame with ``question`` (the user turn's question), ``system``, ``user``,
        ``score`` (1..5) and ``prompt``.

    Raises:
        FileNotFoundError: the file does not exist (the seed's error).
        ValueError: naming the line and value: a record without ``messages`` or ``prompt``, an
            assistant turn that is not one label token, a label outside 1..5, or ``n_sample``
            larger than the file.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"The file {path} was not found.")
    frame = pd.read_json(path, lines=True)
    if n_sample is not None:
        if n_sample > len(frame):
            raise ValueError(
                f"n_sample: {n_sample} is larger than the {len(frame)} records in {path}"
            )
        frame = frame.sample(n=n_sample, random_state=random_state)
    rows = [_parse_record(record, f"{path}:{index + 1}") for index, record in frame.iterrows()]
    return pd.DataFrame(rows, columns=["question", "system", "user", "score", "prompt"])


def _parse_record(record: Any, where: str) -> dict[str, Any]:
    for key in ("messages", "prompt"):
        value = record.get(key)
        if value is None or (isinstance(value, float) and value != value):
            raise ValueError(f"{where}: record has no {key!r} field; expected messages and prompt")
    messages = record["messages"]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"{where}: messages must be a list of {{role, content}}, got {messages!r}")
    by_role = {str(m.get("role")): str(m.get("content", "")) for m in messages}
    if "assistant" not in by_role or "user" not in by_role:
        raise ValueError(
            f"{where}: messages need a user and an assistant turn, got {list(by_role)}"
        )
    answer = by_role["assistant"]
    match = _LABEL.match(answer)
    if match is None:
        raise ValueError(
            f"{where}: assistant turn {answer!r} is not a label token; expected one of "
            f"{list(LABEL_TOKENS)}"
        )
    score = int(match.group(1))
    if not 1 <= score <= len(LABEL_TOKENS):
        raise ValueError(f"{where}: label {score} is outside 1..5 ({answer!r})")
    user = by_role["user"]
    question = user.removeprefix("[Question]\n").split("\n\nPrediction:")[0]
    return {
        "question": question,
        "system": by_role.get("system", ""),
        "user": user,
        "score": score,
        "prompt": str(record["prompt"]),
    }


def seed_split(frame: Any, test_size: float = 0.1, seed: int = 42) -> tuple[Any, Any]:
    """The seed's ``train_test_split(test_size=0.1, seed=42)``: a seeded shuffle, then the last
    ``ceil(test_size * n)`` rows are the eval set (as ``datasets`` does it)."""
    import math

    import numpy as np

    order = np.random.default_rng(seed).permutation(len(frame))
    n_test = math.ceil(test_size * len(frame))
    shuffled = frame.iloc[order].reset_index(drop=True)
    return shuffled.iloc[: len(frame) - n_test], shuffled.iloc[len(frame) - n_test :]


def seed_record_text(row: Any) -> str:
    """The prompt text of a seed record (its own system instruction and user turn)."""
    messages = [
        {"role": "system", "content": row["system"]},
        {"role": "user", "content": row["user"]},
    ]
    return concat_messages(messages) + "ASSISTANT:\n"


# --- tokenized examples -----------------------------------------------------------------------


class RouterExamples:
    """``torch`` dataset of router examples: prompt tokens then the label token, right-padded
    to one length; ``labels`` is ``IGNORE_INDEX`` everywhere but the label position.

    Args:
        prompts: texts ending where the label comes.
        scores: the label of each (1..5).
        tokenizer: with the label tokens added.
        max_length: the router's positions; a longer example is an error naming it.
    """

    def __init__(
        self, prompts: Sequence[str], scores: Sequence[int], tokenizer: Any, max_length: int
    ):
        import torch

        from router_pipelines.models.query_router import label_token_ids

        label_ids = label_token_ids(tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoded = []
        for index, (text, score) in enumerate(zip(prompts, scores, strict=True)):
            if not 1 <= int(score) <= len(label_ids):
                raise ValueError(f"example {index}: label {score} is outside 1..5")
            ids = tokenizer.encode(text, add_special_tokens=False) + [label_ids[int(score) - 1]]
            if len(ids) > max_length:
                raise ValueError(
                    f"example {index}: {len(ids)} tokens (prompt + label) exceed the router "
                    f"model's {max_length} positions; shorten query_router.prompt or the queries"
                )
            encoded.append(ids)
        width = max((len(ids) for ids in encoded), default=1)
        n = len(encoded)
        self.input_ids = torch.full((n, width), pad_id, dtype=torch.long)
        self.labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
        self.attention_mask = torch.zeros((n, width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            self.input_ids[row, : len(ids)] = torch.tensor(ids)
            self.attention_mask[row, : len(ids)] = 1
            self.labels[row, len(ids) - 1] = ids[-1]

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {
            "input_ids": self.input_ids[index],
            "labels": self.labels[index],
            "attention_mask": self.attention_mask[index],
        }
