"""The chat pyfunc's pieces: conversations from inputs, chat-template prompts, greedy replies."""

from __future__ import annotations

import json

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from router_pipelines.data.tokenizer import train_bpe_tokenizer
from router_pipelines.models.bundle import ModelBundle
from router_pipelines.models.memory import MemoryAdapter, MemoryConfig
from router_pipelines.serving.memory import chat_replies, conversation


def test_a_string_is_one_user_turn_and_a_json_list_is_a_conversation():
    assert conversation("What is os?") == [{"role": "user", "content": "What is os?"}]
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert conversation(json.dumps(turns)) == turns
    assert conversation("[not json") == [{"role": "user", "content": "[not json"}]


def test_replies_follow_the_chat_template_prompt_and_stop_at_eos():
    tokenizer = train_bpe_tokenizer(["what does json do", "it encodes"] * 20, 280, 1)
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=len(tokenizer), n_positions=64)
    model = MemoryAdapter(
        GPT2LMHeadModel(config), MemoryConfig(num_memory_tokens=16, chapter_size=8, num_heads=2)
    ).eval()
    bundle = ModelBundle(model, tokenizer, {"family": "memory"})
    prompt = tokenizer.apply_chat_template(
        conversation("what does json do"), add_generation_prompt=True, tokenize=False
    )
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    expected = model.generate(ids, max_new_tokens=6, eos_token_id=tokenizer.eos_token_id)
    (reply,) = chat_replies(bundle, ["what does json do"], 6)
    assert reply == tokenizer.decode(expected[0, ids.shape[1] :], skip_special_tokens=True)
    assert prompt.endswith("<|assistant|>\n")
