"""Code-cleaning switches for python-codes-25k style answers, each change counted and logged.

    from lit_lora.data.cleaning import CodeCleaning, clean_rows
    rows, counts = clean_rows(rows, CodeCleaning(strip_fence=True, dedupe=True))
    # counts == Counter({"fence stripped": 12, "duplicates removed": 3, ...})

Cleaning runs on the raw rows before the train / validation split, so a duplicate can never sit on
both sides of it.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections import Counter
from dataclasses import dataclass

FENCE = re.compile(r"\A\s*(?:```\s*python[ \t]*\n|python[ \t]*\n)", re.IGNORECASE)
CLOSING_FENCE = re.compile(r"\n?```\s*\Z")


@dataclass(frozen=True)
class CodeCleaning:
    """Which cleaning steps run on the ``output`` column (all off by default: the data stays as published).

    Args:
        strip_fence: Remove a leading ``python\\n`` (or a leading ```` ```python ```` fence and its closing ```` ``` ````).
        normalize_whitespace: Strip trailing spaces, turn tabs into 4 spaces, squeeze 3+ blank lines, trim the ends.
            Indentation is kept: it is Python syntax.
        drop_comments: Remove ``#`` comments (with Python's tokenizer, so a ``#`` inside a string stays).
        dedupe: Keep the first of rows whose instruction, input and output are equal after cleaning.
        drop_empty: Remove rows whose instruction or output is empty after cleaning.
    """

    strip_fence: bool = False
    normalize_whitespace: bool = False
    drop_comments: bool = False
    dedupe: bool = False
    drop_empty: bool = False

    @property
    def enabled(self) -> bool:
        return any(vars(self).values())


def strip_fence(code: str) -> str:
    match = FENCE.match(code)
    if not match:
        return code
    body = code[match.end():]
    return CLOSING_FENCE.sub("", body) if match.group(0).lstrip().startswith("```") else body


def normalize_whitespace(code: str) -> str:
    lines = [line.replace("\t", "    ").rstrip() for line in code.replace("\r\n", "\n").split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def drop_comments(code: str) -> str:
    """Code without ``#`` comments; text that Python cannot tokenise loses only whole-line comments."""
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(code).readline))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return "\n".join(line for line in code.split("\n") if not line.lstrip().startswith("#"))
    lines = code.split("\n")
    whole_line = set()
    for tok in (t for t in tokens if t.type == tokenize.COMMENT):
        row, col = tok.start
        if not lines[row - 1][:col].strip():
            whole_line.add(row)
            if row > 1 and lines[row - 2].endswith("\\"):  # a line joined to this comment alone: no longer
                lines[row - 2] = lines[row - 2][:-1].rstrip()
        lines[row - 1] = lines[row - 1][:col].rstrip()
    return "\n".join(line for i, line in enumerate(lines, 1) if i not in whole_line)


def clean_rows(rows: list[dict], cleaning: CodeCleaning, field: str = "output",
               key_fields: tuple[str, ...] = ("instruction", "input", "output")) -> tuple[list[dict], Counter]:
    """Apply the enabled steps to ``rows[field]``; return the kept rows and a count per step."""
    counts: Counter = Counter()
    steps = [(cleaning.strip_fence, strip_fence, "fence stripped"),
             (cleaning.normalize_whitespace, normalize_whitespace, "whitespace normalised"),
             (cleaning.drop_comments, drop_comments, "comments dropped")]
    kept, seen = [], set()
    for row in rows:
        row = dict(row)
        text = row.get(field) or ""
        for enabled, step, name in steps:
            if enabled:
                new = step(text)
                counts[name] += new != text
                text = new
        row[field] = text
        if cleaning.drop_empty and (not text.strip() or not str(row.get("instruction") or "").strip()):
            counts["empty rows removed"] += 1
            continue
        if cleaning.dedupe:
            key = tuple(" ".join(str(row.get(k) or "").split()) for k in key_fields)
            if key in seen:
                counts["duplicates removed"] += 1
                continue
            seen.add(key)
        kept.append(row)
    return kept, counts
