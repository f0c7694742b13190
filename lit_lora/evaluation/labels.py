"""Map a model's free-text answer to one of the label names, or ``None`` when it names none (or several).

An unparseable answer is never guessed: callers count it as wrong and report how many there were::

    >>> from lit_lora.evaluation.labels import parse_label
    >>> parse_label(" Neutral.</s>", ["entailment", "neutral", "contradiction"])
    'neutral'
    >>> parse_label("Answer: it is a contradiction", ["entailment", "neutral", "contradiction"])
    'contradiction'
    >>> parse_label("entailment or neutral", ["entailment", "neutral", "contradiction"]) is None
    True
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

UNPARSEABLE = -1  # label_index of an answer that names no label (the metrics count it wrong)

def _pattern(label: str) -> re.Pattern:
    """Whole-word, case-insensitive match of a label; ``_`` / ``-`` / space in a label match each other."""
    words = [re.escape(w) for w in re.split(r"[\s_\-]+", label.strip()) if w]
    return re.compile(r"(?<![A-Za-z0-9_])" + r"[\s_\-]+".join(words) + r"(?![A-Za-z0-9_])", re.IGNORECASE)


def find_labels(text: str, label_names: Sequence[str]) -> list[tuple[int, str]]:
    """``(position, label)`` of every label mentioned in ``text``.

    Longer labels are matched first and their spans masked, so ``not_entailment`` is not also
    read as ``entailment``.
    """
    found: list[tuple[int, str]] = []
    masked = text
    for label in sorted(label_names, key=len, reverse=True):
        for match in _pattern(label).finditer(masked):
            found.append((match.start(), label))
        masked = _pattern(label).sub(lambda m: " " * len(m.group(0)), masked)
    return sorted(found)


def parse_label(text: str, label_names: Sequence[str]) -> Optional[str]:
    """The one label ``text`` mentions (whole words, any case), or ``None``.

    A text naming no label, or hedging between several different ones, is unparseable: picking the
    first would credit an answer like "entailment or neutral" by luck.
    """
    if not label_names:
        raise ValueError("parse_label needs at least one label name")
    distinct = {label for _, label in find_labels(text or "", label_names)}
    return distinct.pop() if len(distinct) == 1 else None


def label_index(text: str, label_names: Sequence[str]) -> int:
    """Index of the parsed label in ``label_names``; ``UNPARSEABLE`` (-1) for an unparseable answer."""
    label = parse_label(text, label_names)
    return UNPARSEABLE if label is None else list(label_names).index(label)
