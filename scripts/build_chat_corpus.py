"""Build the embedded chat corpus, data/01_raw/python_docs_chat.jsonl, from the text corpus.

Each record is a question about a standard-library module, class, function or method, or a
language topic (``help("if")``), answered with its documentation, in the ``messages`` format::

    {"messages": [{"role": "user", "content": "What does json.dumps do?"},
                  {"role": "assistant", "content": "json.dumps(obj, *, skipkeys=..., ...)\\n..."}]}

The source is data/01_raw/python_docs.jsonl (scripts/build_corpus.py), read as it is shipped:
the same input file always gives the same bytes, on any interpreter. Question wording is
picked per entry by a hash of its name (no random state); answers keep whole paragraphs up to
``--max-answer-chars``; every seventh chat starts with a system message. Records are written in
corpus order until ``--max-bytes``.

Usage::

    python scripts/build_chat_corpus.py [--source data/01_raw/python_docs.jsonl]
        [--output data/01_raw/python_docs_chat.jsonl] [--max-bytes 1400000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path

SYSTEM = "You are a concise assistant that answers questions about Python's standard library."
MIN_ANSWER_CHARS = 40
QUESTIONS = {
    "module": (
        "What is the Python module {name} for?",
        "Tell me about the {name} module.",
        "What does the standard-library module {name} provide?",
    ),
    "class": (
        "What is the class {name}?",
        "Explain the class {name}.",
        "What is {name} used for?",
    ),
    "function": (
        "What does {name} do?",
        "Explain the function {name}.",
        "How do I use {name}?",
    ),
    "method": (
        "What does the method {name} do?",
        "Explain {name}.",
    ),
    "topic": (
        "Explain the Python topic '{name}'.",
        "How does '{name}' work in Python?",
    ),
}


def entries(record: dict) -> Iterator[tuple[str, str, str]]:
    """``(kind, name, documentation)`` of a corpus record: a pydoc topic, or a module record's
    module docstring and each class / function / method section."""
    url, text = record["url"], record["text"]
    if url.startswith("pydoc-topic:"):
        yield "topic", url.split(":", 1)[1], text
        return
    module = url.rsplit("/", 1)[-1].removesuffix(".html")
    header = re.compile(rf"^(class )?{re.escape(module)}\.([\w.]+)(\(.*\))?$")
    sections: list[tuple[str, str, list[str]]] = [("module", module, [])]
    for line in text.splitlines():
        match = header.match(line)
        previous = sections[-1][2]
        if match and (not previous or previous[-1] == ""):
            dotted = f"{module}.{match.group(2)}"
            if match.group(1):
                kind = "class"
            elif "." in match.group(2):
                kind = "method"
            else:
                kind = "function"
            sections.append((kind, dotted, [line]))
        else:
            previous.append(line)
    first = sections[0][2]
    if first and first[0] == module:  # the module record starts with its name
        first.pop(0)
    for kind, name, lines in sections:
        yield kind, name, "\n".join(lines).strip()


def answer(documentation: str, max_chars: int) -> str:
    """Whole paragraphs of ``documentation`` up to ``max_chars`` (at least the first one, cut)."""
    paragraphs = [p.strip() for p in documentation.split("\n\n") if p.strip()]
    kept, size = [], 0
    for paragraph in paragraphs:
        if kept and size + len(paragraph) + 2 > max_chars:
            break
        kept.append(paragraph)
        size += len(paragraph) + 2
    return "\n\n".join(kept)[:max_chars].strip()


def chat(kind: str, name: str, documentation: str, number: int, max_chars: int) -> dict | None:
    reply = answer(documentation, max_chars)
    if len(reply) < MIN_ANSWER_CHARS:
        return None
    templates = QUESTIONS[kind]
    choice = int(hashlib.sha256(name.encode("utf-8")).hexdigest(), 16) % len(templates)
    messages = [{"role": "user", "content": templates[choice].format(name=name)}]
    if number % 7 == 0:
        messages.insert(0, {"role": "system", "content": SYSTEM})
    messages.append({"role": "assistant", "content": reply})
    return {"messages": messages}


def build(source: Path, max_bytes: int, max_answer_chars: int) -> list[str]:
    lines, size = [], 0
    with source.open(encoding="utf-8") as handle:
        for raw in handle:
            for kind, name, documentation in entries(json.loads(raw)):
                record = chat(kind, name, documentation, len(lines), max_answer_chars)
                if record is None:
                    continue
                line = json.dumps(record, ensure_ascii=False) + "\n"
                if size + len(line.encode("utf-8")) > max_bytes:
                    return lines
                lines.append(line)
                size += len(line.encode("utf-8"))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=Path("data/01_raw/python_docs.jsonl"))
    parser.add_argument("--output", type=Path, default=Path("data/01_raw/python_docs_chat.jsonl"))
    parser.add_argument("--max-bytes", type=int, default=1_400_000)
    parser.add_argument("--max-answer-chars", type=int, default=600)
    args = parser.parse_args()
    lines = build(args.source, args.max_bytes, args.max_answer_chars)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.output.with_name(args.output.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    tmp.replace(args.output)
    print(f"wrote {len(lines)} chats, {args.output.stat().st_size} bytes to {args.output}")


if __name__ == "__main__":
    main()
