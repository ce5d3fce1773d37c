"""Tokenizers: a pretrained one by name/path, or a byte-level BPE trained on the train split.

The trained tokenizer is a standard ``PreTrainedTokenizerFast`` (saved with ``save_pretrained``,
loaded back with ``AutoTokenizer.from_pretrained``) with bos/eos/pad tokens, one special token per
chat role, and a chat template whose assistant turns sit in ``{% generation %}`` blocks, so
instruction mode can mask everything but the assistant's tokens with our own tokenizer too.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
PAD_TOKEN = "<|pad|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (EOS_TOKEN, BOS_TOKEN, PAD_TOKEN, *ROLE_TOKENS)  # ids 0..5 in this order

# Zephyr-like layout: "<|role|>\n{content}<eos>\n" per message. The assistant's content and its
# EOS are inside {% generation %} so the model learns to answer and to stop; the role headers
# and the newline after EOS are prompt. Uses only `eos_token`, so it also fits pretrained
# tokenizers that ship without a template (their role markers are then ordinary text).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + eos_token -}}{%- endgeneration -%}"
    "{%- else -%}{{- message['content'] + eos_token -}}{%- endif -%}"
    "{{- '\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\n' -}}{%- endif -%}"
)
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")


def train_bpe_tokenizer(
    texts: Sequence[str], vocab_size: int, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE (GPT-2 style, no unknown tokens) on ``texts``.

    Args:
        texts: training documents (the train split only, so validation stays unseen).
        vocab_size: final vocabulary size including the byte alphabet and special tokens.
        min_frequency: minimum pair count for a merge.

    Raises:
        ValueError: no text to train on.
    """
    if not texts:
        raise ValueError("tokenizer: cannot train a BPE tokenizer on an empty train split")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets exact, which the assistant mask relies on.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer, length=len(texts))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        extra_special_tokens=list(ROLE_TOKENS),
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    logger.info("trained byte-level BPE: %d tokens on %d texts", len(tokenizer), len(texts))
    return tokenizer


def load_pretrained_tokenizer(
    name_or_path: str, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` with a pad token guaranteed."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give ``tokenizer`` a pad token: its EOS when it has one, else a new ``<|pad|>``.

    Reusing EOS keeps the vocabulary (and so the model's embedding) unchanged; padded positions
    are masked by ``attention_mask`` and ``labels == -100`` anyway.
    """
    if tokenizer.pad_token is not None:
        return
    if tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    else:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        logger.warning("tokenizer had no pad or eos token: added %s (vocab grew)", PAD_TOKEN)


def ensure_chat_template(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a chat template ours (needed by instruction mode)."""
    if tokenizer.chat_template is None:
        logger.warning("tokenizer %r has no chat template: using ours", tokenizer.name_or_path)
        tokenizer.chat_template = CHAT_TEMPLATE


def has_generation_tags(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the chat template marks assistant turns with ``{% generation %}``."""
    template = tokenizer.chat_template
    if isinstance(template, dict):  # several named templates: the default one is used
        template = template.get("default")
    return isinstance(template, str) and bool(_GENERATION_TAG.search(template))
