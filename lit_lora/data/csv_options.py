"""How lit-lora has pandas (through ``datasets``) read a CSV file: cells as written, every column named once.

pandas' defaults lose text silently: a text cell reading ``None``, ``NA``, ``N/A``, ``null`` or ``nan`` becomes a
missing value (an answer ``None`` would be dropped as an empty output, an input ``N/A`` vanish from its prompt),
a header naming a column twice renames the second ``output.1``, which then never trains, and a first data row with
one field more than the header (an unquoted comma, or a comma ending every line) makes the first column the row
index, every other cell landing one column to the left::

    from lit_lora.data.csv_options import csv_read_options
    options = csv_read_options("codes.csv", text_columns=["instruction", "input", "output"])
    # {"converters": {...: str}, "keep_default_na": False, "na_values": {"instruction": [""], ..., "label": [...]}}
"""

from __future__ import annotations

import csv
from typing import Optional, Sequence

from pandas._libs.parsers import STR_NA_VALUES  # pandas' default missing-value strings, kept for other columns


def csv_header(path: str) -> list[str]:
    """The column names of the CSV file's first line."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader(f), [])


def csv_read_options(path: str, text_columns: Sequence[str]) -> dict:
    """``load_dataset("csv", …)`` options: text columns kept as strings, only an empty cell missing in them
    (read as empty, as before); other columns (an NLI label) keep pandas' missing-value strings."""
    if not text_columns:
        return {}
    na_values = {name: [""] if name in text_columns else sorted(STR_NA_VALUES) for name in csv_header(path)}
    return {"converters": {c: str for c in text_columns}, "keep_default_na": False, "na_values": na_values}


def duplicate_column(path: str) -> Optional[str]:
    """``line 1: column 'output' is named twice …`` for a header that repeats a name; None if none does."""
    header = csv_header(path)
    repeated = next((name for i, name in enumerate(header) if name.strip() and name in header[:i]), None)
    if repeated is None:
        return None
    return (f"line 1: column {repeated!r} is named twice (pandas would read the second as {repeated + '.1'!r}, "
            f"which nothing reads): give each column one name")


def long_row(path: str) -> Optional[str]:
    """``line N: …`` for the first row with more fields than the header, read as pandas reads it (blank lines
    skipped); None if none has. pandas fails on such a row, except as the first data row: there it silently
    takes the first column as the row index, so every row trains on the wrong cells (its input as the instruction)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        start = reader.line_num + 1
        for record in reader:
            if len(record) > len(header):
                return (f"line {start}: {len(record)} fields where the header has {len(header)} (a comma in a field "
                        f"that is not quoted, or at the end of the line: quote the field or drop the comma)")
            start = reader.line_num + 1
    return None
