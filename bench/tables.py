"""Plain-text tables for the benchmarks' console reports (first column left-aligned, the rest right-aligned).

    >>> print(table([["contender", "tokens/s"], ["HF", fmt(653.2, ".0f")], ["lit-lora", fmt(None, ".0f")]]))
    contender  tokens/s
    ---------  --------
    HF              653
    lit-lora          -
"""

from __future__ import annotations

from typing import Optional


def fmt(value: Optional[float], spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` where it was not measured."""
    return "-" if value is None else format(value, spec)


def table(rows: list[list[str]]) -> str:
    """``rows`` (the first is the header) as aligned columns with a rule under the header."""
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
