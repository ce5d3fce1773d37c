"""pyfunc wrapper of the memory-adapter LM (family ``memory``): a chat in, the assistant's reply out.

Each input is a user message (a string) or a whole conversation: a JSON list of
``{"role", "content"}`` turns. The tokenizer's chat template is applied with the generation
prompt and the reply is decoded greedily until the end-of-sequence token::

    chat = mlflow.pyfunc.load_model("models:/memory_lm/latest")
    chat.predict(["What does json.dumps do?"], params={"max_new_tokens": 64})

Logged as model code like :mod:`router_pipelines.serving.causal_lm`.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.models import ModelSignature, infer_signature, set_model

from router_pipelines.serving.causal_lm import PARAMS as CAUSAL_LM_PARAMS
from router_pipelines.serving.causal_lm import CausalLMModel
from router_pipelines.serving.generation import check_max_new_tokens, prompts_from

PARAMS: dict[str, Any] = {**CAUSAL_LM_PARAMS, "max_new_tokens": 64}


def signature() -> ModelSignature:
    """Messages (strings or JSON conversations) in, replies out, params :data:`PARAMS`."""
    return infer_signature(["What does json.dumps do?"], ["a reply"], params=PARAMS)


def conversation(text: str) -> list[dict[str, str]]:
    """A JSON list of turns as is; any other string as one user turn."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            turns = json.loads(stripped)
        except json.JSONDecodeError:
            turns = None
        if isinstance(turns, list) and all(
            isinstance(t, dict) and {"role", "content"} <= set(t) for t in turns
        ):
            return [{"role": str(t["role"]), "content": str(t["content"])} for t in turns]
    return [{"role": "user", "content": text}]


def chat_replies(bundle: Any, inputs: list[str], max_new_tokens: int) -> list[str]:
    """The greedy assistant reply to each conversation (without the prompt)."""
    import torch

    tokenizer, model = bundle.tokenizer, bundle.model
    context = getattr(model.config, "max_position_embeddings", None) or getattr(
        model.config, "n_positions", None
    )
    replies = []
    with torch.inference_mode():
        for text in inputs:
            prompt = tokenizer.apply_chat_template(
                conversation(text), add_generation_prompt=True, tokenize=False
            )
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            room = max_new_tokens
            if context:
                ids = ids[:, -(context - 1) :]
                room = min(room, context - ids.shape[1])
            if room <= 0:
                replies.append("")
                continue
            out = model.generate(ids, max_new_tokens=room, eos_token_id=tokenizer.eos_token_id)
            replies.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return replies


class MemoryChatModel(CausalLMModel):
    """:class:`CausalLMModel` loading, chat-template generation."""

    def predict(self, context, model_input, params=None):
        params = params or {}
        max_new_tokens = check_max_new_tokens(
            params.get("max_new_tokens", PARAMS["max_new_tokens"])
        )
        return chat_replies(self.bundle, prompts_from(model_input), max_new_tokens)


set_model(MemoryChatModel())
