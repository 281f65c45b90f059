"""More training text from a few sentences, deterministically: clause recombination, word spans,
sentence pairs, word dropout and templates over the split's own sentences.

Distilling a sentence encoder needs many inputs but no labels (the teacher labels them), and what
the student must learn is the teacher's map over the inputs it will see: text like the corpus.
Every generated text is made only of words from the split it is given, so a held-out split stays
unseen. The same sentences, count and seed give the same texts on every machine (numpy's PCG64).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import numpy as np

KINDS = ("recombine", "span", "pair", "dropout", "template")
"""How texts are made, in the order the generator deals them out (round-robin, so any prefix of
the generated texts holds every kind in equal shares)."""
VOCABULARY_KINDS = ("words", "mixed")
"""Added when a vocabulary is given: runs of the tokenizer's whole words (words), and corpus
sentences with some words swapped for vocabulary words (mixed): the student then sees the
teacher's layers applied to many more token embeddings than a few sentences hold."""

_CLAUSE = re.compile(r"(?<=[,;:])\s+|\s+(?:—|-{1,2})\s+|\s+(?=(?:and|but|so|because|while)\s)")
_TEMPLATES = (
    "{a}",
    "Can you tell me about {a}?",
    "I read that {a}.",
    "{a}, according to the notes.",
    "Question: {a}?",
    "Note to self: {a}.",
    "Is it true that {a}?",
    "Someone said {a}, and {b}.",
    "{a}; meanwhile {b}.",
    "Summary: {a}.",
)


def _clauses(sentence: str) -> list[str]:
    parts = [p.strip(" ,;:") for p in _CLAUSE.split(sentence)]
    return [p for p in parts if len(p.split()) >= 2]


def _strip_end(text: str) -> str:
    return text.rstrip(" .!?;:,")


def generate_texts(
    sentences: Sequence[str], count: int, seed: int = 0, vocabulary: Sequence[str] = ()
) -> list[str]:
    """`count` new texts built from `sentences` (not including them), the same on every run.

    recombine: a clause of one sentence joined to a clause of another; span: a run of 3 to 16
    words of one sentence; pair: two sentences in one text; dropout: a sentence with about 15 %
    of its words left out; template: a span or clause set in one of a few fixed frames. With a
    `vocabulary` (whole words of the tokenizer): words, 4 to 24 vocabulary words in a frame;
    mixed, a sentence with about 30 % of its words swapped for vocabulary words."""
    if count <= 0:
        return []
    pool = [s.strip() for s in sentences if s.strip()]
    if len(pool) < 2:
        raise ValueError("generating text needs at least two sentences to recombine")
    rng = np.random.default_rng(seed)
    clauses = [c for s in pool for c in _clauses(s)] or pool

    def pick(items: Sequence[str]) -> str:
        return items[int(rng.integers(len(items)))]

    def span() -> str:  # shorter than its sentence, so never a copy of it
        words = pick(pool).split()
        length = min(int(rng.integers(3, 17)), max(1, len(words) - 1))
        start = int(rng.integers(len(words) - length + 1))
        return " ".join(words[start : start + length])

    def recombine() -> str:
        a, b = pick(clauses), pick(clauses)
        joint = pick([", ", "; ", " and ", " but ", " because ", " — "])
        return f"{_strip_end(a)}{joint}{b[:1].lower() + b[1:]}"

    def pair() -> str:
        return f"{pick(pool)} {pick(pool)}"

    def dropout() -> str:  # at least one word goes
        words = pick(pool).split()
        kept = [w for w in words if rng.random() >= 0.15]
        if len(kept) == len(words) and len(words) > 1:
            kept.pop(int(rng.integers(len(kept))))
        return " ".join(kept if kept else words)

    def template() -> str:
        frame = pick(_TEMPLATES)
        first = _strip_end(span() if rng.random() < 0.5 else pick(clauses))
        a = first[:1].lower() + first[1:] if not frame.startswith("{a}") else first
        return frame.format(a=a, b=_strip_end(pick(clauses)))

    words_list = list(vocabulary)

    def words() -> str:
        run = " ".join(pick(words_list) for _ in range(int(rng.integers(4, 25))))
        return pick(_TEMPLATES).format(a=run, b=_strip_end(pick(clauses)))

    def mixed() -> str:
        return " ".join(pick(words_list) if rng.random() < 0.3 else w for w in pick(pool).split())

    makers: dict[str, Callable[[], str]] = {
        "recombine": recombine,
        "span": span,
        "pair": pair,
        "dropout": dropout,
        "template": template,
        "words": words,
        "mixed": mixed,
    }
    kinds = KINDS + (VOCABULARY_KINDS if words_list else ())
    return [makers[kinds[i % len(kinds)]]() for i in range(count)]


def vocabulary_words(tokenizer: object, min_length: int = 3) -> list[str]:
    """The tokenizer's whole words (no word pieces, special tokens or non-letters), sorted: what
    `generate_texts` draws vocabulary words from."""
    vocab: dict[str, int] = getattr(tokenizer, "get_vocab", dict)()
    return sorted(w for w in vocab if len(w) >= min_length and w.isalpha() and w.isascii())
