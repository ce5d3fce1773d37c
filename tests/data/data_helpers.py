"""Plain helpers shared by the data-layer tests (imported as a module, unlike conftest)."""

from __future__ import annotations

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Python lists are mutable sequences, typically used to store collections of items.",
    "A tuple is an immutable sequence; tuples are written with commas between items.",
    "Dictionaries map hashable keys to arbitrary values and keep insertion order.",
    "Generators produce items lazily with the yield statement, one value at a time.",
    "Exceptions are raised with raise and handled by try and except clauses.",
]


def corpus_texts(n: int = 40) -> list[str]:
    """``n`` distinct short documents, deterministic."""
    return [
        f"Document {i}. " + " ".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(3))
        for i in range(n)
    ]
