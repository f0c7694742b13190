"""What is wrong with a local data file, named by file, line and field (used by ``sources.load_rows``).

    from lit_lora.data.file_errors import check_utf8, json_problem
    check_utf8("rows.jsonl")       # DataFileError: rows.jsonl: line 4, field 'input': byte 0xe9 is not UTF-8 ...
    json_problem("rows.jsonl")     # "line 3, column 71: invalid JSON (Expecting ':' delimiter)" or None
    check_json_rows("rows.jsonl", ["instruction", "output"], ["output"])  # DataFileError: rows.jsonl: line 7,
                                   # field 'output': missing from the row (...) (did you mean 'output'?)

Data rows are counted from 0 in load order (files one after another), lines from 1 in the file.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from datasets import Dataset, Value

from lit_lora.errors import InputError

TEXT_FILES = (".json", ".jsonl", ".csv")
TEXT_DTYPES = ("string", "large_string", "null")
ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of a byte that is not UTF-8
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # json.loads pairs "\ud83d\ude00"; one left alone is no character
SPACE = re.compile(r"\s*")  # what str.lstrip strips: skipped between the JSON values of a JSON-lines file


class DataFileError(InputError, ValueError):
    """Local data that cannot become rows, or rows of the wrong type; the message names file, line and field."""


def check_utf8(path: str) -> None:
    """Fail on the first bytes that are not UTF-8: arrow's JSON reader keeps them, so without this they
    surface as a bare ``UnicodeDecodeError`` mid-tokenisation (and pandas' CSV error names no line)."""
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as err:
                field = field_with_bad_bytes(path, raw)
                at = f", field {field!r}" if field else ""
                raise DataFileError(f"{path}: line {lineno}{at}: byte 0x{raw[err.start]:02x} is not UTF-8 "
                                    f"(save the file as UTF-8)") from None


def field_with_bad_bytes(path: str, raw: bytes) -> Optional[str]:
    """The column of ``raw`` (one line of ``path``) that holds the bytes that are not UTF-8, if it can be told."""
    line = raw.decode("utf-8", errors="surrogateescape")
    if Path(path).suffix == ".csv":
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
            header = next(csv.reader(f), [])
        values = next(csv.reader([line]), [])
        fields = zip(header, values) if len(values) == len(header) else ()
    else:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return None
        fields = row.items() if isinstance(row, dict) else ()
    return next((name for name, value in fields
                 if ESCAPED_BYTE.search(json.dumps(value, ensure_ascii=False))), None)


def unreadable(source: str, files: list[str], err: Exception) -> DataFileError:
    """The error for files ``datasets`` failed on: the first problem found by reading them again with
    ``json`` / ``csv``, else ``datasets``' own innermost message, named by file."""
    cause = innermost(err)
    checks = {".json": json_problem, ".jsonl": json_problem, ".csv": csv_problem, ".parquet": parquet_problem}
    for path in files:
        check = checks.get(Path(path).suffix)
        problem = check(path) if check else None
        if problem:
            return DataFileError(f"{path}: {problem}")
    return DataFileError(f"{source}: datasets could not read it ({type(cause).__name__}: {cause})")


def innermost(err: BaseException) -> BaseException:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    return err


def json_problem(path: str) -> Optional[str]:
    """What keeps a JSON / JSON-lines file from being rows, as ``line N[, field F]: ...``; None if nothing is."""
    text = Path(path).read_text(encoding="utf-8-sig")  # a byte-order mark is no error (Excel, Notepad write one)
    if not text.strip():
        return "no rows: the file is empty"
    if text.lstrip().startswith("["):  # one JSON document: an array of rows
        return json_array_problem(text)
    try:  # lazily, line by line: a type change early is named before a broken line late
        return json_rows_problem(line_rows(text), "each line")
    except json.JSONDecodeError as line_err:  # rows spread over lines (datasets reads them), or broken JSON
        try:
            return json_rows_problem(json_values(text), "each line")
        except json.JSONDecodeError as err:  # rows were lines before the failing one: its own place, else the decoder's
            first_line = text.count("\n", 0, len(text) - len(text.lstrip())) + 1
            return invalid_json(err if line_err.lineno == first_line else line_err)


def line_rows(text: str):
    """(line, parsed row) of each non-blank line of ``text``; ``JSONDecodeError`` placed in the whole text."""
    at = 0
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            try:
                yield n, parse_row(line)
            except json.JSONDecodeError as err:
                raise json.JSONDecodeError(err.msg, text, at + err.pos) from None
        at += len(line) + 1


def parquet_problem(path: str) -> Optional[str]:
    """"no rows" for a parquet file of none (arrow says "BatchSize must be greater than 0"); None otherwise, and
    for a file arrow cannot open (its own message says that)."""
    try:
        return None if pq.ParquetFile(path).metadata.num_rows else "no rows: the parquet file holds none"
    except (pa.ArrowException, OSError):
        return None


def json_array_problem(text: str) -> Optional[str]:
    """``json_problem`` for a file holding one JSON array: invalid JSON, or an element that is not a row."""
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as err:
        return invalid_json(err)
    if not isinstance(rows, list) or not rows:
        return "no rows: an empty JSON array" if isinstance(rows, list) else None
    return json_rows_problem(array_elements(text, len(rows)), "each element of the array")


def invalid_json(err: json.JSONDecodeError) -> str:
    return f"line {err.lineno}, column {err.colno}: invalid JSON ({err.msg})"


def array_elements(text: str, count: int):
    """(line the element starts on, parsed element) for each of the ``count`` elements of a JSON array."""
    decoder, at = json.JSONDecoder(object_pairs_hook=keep_duplicates), text.index("[") + 1
    for _ in range(count):
        at = len(text) - len(text[at:].lstrip(" \t\r\n,"))
        row, end = decoder.raw_decode(text, at)
        yield text.count("\n", 0, at) + 1, row
        at = end


class Row(dict):
    """A parsed JSON object that remembers the keys it was given more than once (the last value wins in Python's
    json, while ``datasets`` fails on the file with "Trailing data" and no line)."""
    duplicates: tuple[str, ...] = ()


def keep_duplicates(pairs: list[tuple[str, Any]]) -> Row:
    """``object_pairs_hook``: the object, with its repeated keys (and those of objects inside it) noted."""
    row, seen, duplicates = Row(pairs), set(), []
    for key, value in pairs:
        duplicates += [key] if key in seen else []
        duplicates += getattr(value, "duplicates", ())
        seen.add(key)
    row.duplicates = tuple(duplicates)
    return row


def parse_row(line: str) -> Any:
    return json.loads(line, object_pairs_hook=keep_duplicates)


def json_rows_problem(rows, each: str) -> Optional[str]:
    """The first of ``(line number, parsed row)`` that is not a row, or whose field changes type."""
    first_kind: dict[str, tuple[str, int]] = {}
    for lineno, row in rows:
        if not isinstance(row, dict):
            return f"line {lineno}: a JSON {json_kind(row)} where {each} must be an object (one row)"
        if row.duplicates:
            return duplicate_problem(lineno, row)
        if field := surrogate_field(row):
            return (f"line {lineno}, field {field!r}: a lone surrogate escape (\\ud800-\\udfff without its pair) "
                    f"is no character; UTF-8 cannot hold it")
        for field, kind in ((f, json_kind(v)) for f, v in row.items()):
            seen_kind, seen_line = first_kind.setdefault(field, (kind, lineno)) if kind != "null" else (kind, 0)
            if kind != seen_kind:  # datasets reads a column of mixed types, but not in a file with blank lines
                return (f"line {lineno}, field {field!r}: a JSON {kind} where line {seen_line} holds a {seen_kind} "
                        f"(give the field one type)")
    return None


def surrogate_field(row: Row) -> Optional[str]:
    """The field whose text holds a lone surrogate: Python's json reads one, arrow fails on the file with
    "Trailing data" and no line."""
    return next((field for field, value in row.items()
                 if LONE_SURROGATE.search(json.dumps(value, ensure_ascii=False))), None)


def json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    kinds = {str: "string", int: "number", float: "number", list: "array", dict: "object"}
    return next((kind for cls, kind in kinds.items() if isinstance(value, cls)), type(value).__name__)


def duplicate_problem(lineno: int, row: Row) -> str:
    return (f"line {lineno}, field {row.duplicates[0]!r}: the key is given twice in one object "
            f"(give each field once)")


def check_json_rows(path: str, required: Sequence[str], text_columns: Sequence[str]) -> None:
    """Fail on the first row of a JSON / JSON-lines file that ``datasets`` would read with a silent gap: a
    required key left out (read as null, then dropped as empty), a key given twice, or a NaN / Infinity literal
    in a text field (read as null too). A key given as null or "" stays a counted, logged drop."""
    with open(path, encoding="utf-8-sig", newline="\n") as f:  # lines end at "\n" alone, as datasets splits them
        first = f.read(4096).lstrip()
        f.seek(0)
        if first.startswith("["):  # one JSON array: read whole, as datasets reads it
            text = f.read()
            rows = array_elements(text, len(json.loads(text)))
        else:  # JSON lines: one at a time, the file is never held whole; else objects spread over lines
            rows = json_lines(path, f)
        for lineno, row in rows:
            # datasets reads a null line as a row of nulls, which would count as a row dropped for being empty
            problem = row_problem(lineno, row, required, text_columns) if isinstance(row, dict) else \
                f"line {lineno}: a JSON null where each row must be an object" if row is None else None
            if problem:
                raise DataFileError(f"{path}: {problem}")


def json_lines(path: str, f):
    """(line, parsed row) of a JSON-lines file; for a file whose objects span several lines (``json.dump(row, f,
    indent=2)`` per row, which ``datasets`` reads too), each object with the line it starts on."""
    try:
        for n, line in enumerate(f, 1):  # lazily: a large file is never held whole
            if line.strip():
                yield n, parse_row(line)
        return
    except json.JSONDecodeError:  # rows already checked are checked again below: the checks repeat harmlessly
        f.seek(0)
    try:
        values = json_values(f.read())
    except json.JSONDecodeError as err:
        raise DataFileError(f"{path}: {invalid_json(err)}") from None
    if len(values) == 1 and isinstance(values[0][1], dict) and values[0][1] \
            and all(isinstance(v, list) for v in values[0][1].values()):
        raise DataFileError(f"{path}: line {values[0][0]}: one JSON object of columns ({{\"{next(iter(values[0][1]))}\": "
                            f"[...], ...}}); lit-lora reads rows: one object per row (JSON lines) or an array of them")
    yield from values


def json_values(text: str) -> list[tuple[int, Any]]:
    """(line it starts on, value) of each JSON value of ``text`` in turn, whatever the lines: how ``datasets`` reads
    JSON lines whose rows span several. ``JSONDecodeError`` (line and column in ``text``) where one is broken."""
    decoder, values, at, line, counted = json.JSONDecoder(object_pairs_hook=keep_duplicates), [], 0, 1, 0
    while (at := SPACE.match(text, at).end()) < len(text):  # no slice of the rest: a large file stays linear
        value, end = decoder.raw_decode(text, at)
        line, counted, at = line + text.count("\n", counted, at), at, end
        values.append((line, value))
    return values


def row_problem(lineno: int, row: Row, required: Sequence[str], text_columns: Sequence[str]) -> Optional[str]:
    """``line N, field F: …`` for what ``check_json_rows`` refuses in one parsed row; None if nothing."""
    if row.duplicates:
        return duplicate_problem(lineno, row)
    missing = [field for field in required if field not in row]
    if missing:
        return missing_problem(lineno, row, missing[0], required)
    for field in text_columns:
        value = row.get(field)
        if isinstance(value, float) and not math.isfinite(value):
            literal = "NaN" if math.isnan(value) else "-Infinity" if value < 0 else "Infinity"
            return (f"line {lineno}, field {field!r}: {literal} is not text (nor JSON); "
                    f"expected text (a string, or null for empty)")
    return None


def probably_meant(field: str, found: Sequence[str]) -> Optional[str]:
    """The name in ``found`` that looks like a misspelling of ``field`` (``outptu`` for ``output``), if one does."""
    close = difflib.get_close_matches(field, list(found), n=1, cutoff=0.6)
    return close[0] if close else None


def missing_problem(lineno: int, row: Row, field: str, required: Sequence[str]) -> str:
    """The message for a required key a row lacks, with the unknown key that was probably meant."""
    meant = probably_meant(field, [key for key in row if key not in required])
    hint = f"; it has {meant!r}, which is no field (did you mean {field!r}?)" if meant else ""
    return (f"line {lineno}, field {field!r}: missing from the row (every row gives {', '.join(required)}; "
            f"null for an empty value){hint}")


def csv_problem(path: str) -> Optional[str]:
    """What keeps a CSV file from being rows (pandas' errors name no file), as ``line N: ...``; None if nothing."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, strict=True)
        start = 1
        try:
            header = next(reader, [])
            if not header:
                return "no rows: the file is empty"
            start, rows = reader.line_num + 1, 0
            for record in reader:
                if len(record) > len(header):
                    return f"line {start}: {len(record)} fields where the header has {len(header)}"
                rows += is_record(record)
                start = reader.line_num + 1
        except csv.Error as err:
            unclosed = " (a quoted field that starts on this line is never closed)" if "end of data" in str(err) else ""
            return f"line {start}: invalid CSV ({err}){unclosed}"
    return None if rows else "no rows: only a header line"


def short_row(path: str) -> Optional[str]:
    """``line N: …`` for the first row with fewer fields than the header names (pandas reads the missing ones as
    empty cells: an NLI row cut before its label would count as "no gold label"); read as pandas reads it
    (quotes inside a field allowed), blank lines and unnamed trailing header columns (``a,b,``) ignored."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        named = len(header) - next((i for i, name in enumerate(reversed(header)) if name.strip()), len(header))
        start = reader.line_num + 1
        for record in reader:
            if any(field.strip() for field in record) and len(record) < named:
                return f"line {start}: {len(record)} fields where the header names {named}"
            start = reader.line_num + 1
    return None


def check_text_columns(dataset: Dataset, columns: Sequence[str], where: str,
                       files: Optional[Sequence[str]] = None) -> None:
    """Fail on a text column that holds anything but strings and nulls, naming its first such row."""
    for column in columns:
        feature = dataset.features[column]
        if isinstance(feature, Value) and feature.dtype in TEXT_DTYPES:
            continue
        values = list(dataset[column])
        index = next((i for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
        if index is None:
            continue
        arrow_type = dataset.data.schema.field(column).type
        if isinstance(arrow_type, pa.ExtensionType) or any(isinstance(v, str) for v in values):
            found = f"{type(values[index]).__name__} values among strings"  # datasets' Json: mixed types
        else:
            found = f"{arrow_type} values"
        raise DataFileError(f"{where}: column {column!r} holds {found}; expected text (a string, or null for "
                            f"empty); first at {describe_row(files, index)}: {values[index]!r}")


def describe_row(files: Optional[Sequence[str]], index: int) -> str:
    """``data row 4 (0-based; line 6)``: where data row ``index`` of local ``files`` is, for an error message."""
    located = locate_row(files, index) if files else None
    if located is None:
        return f"data row {index} (0-based)"
    path, lineno = located
    return f"data row {index} (0-based; line {lineno}{'' if len(files) == 1 else f' of {path}'})"


def locate_row(files: Sequence[str], index: int) -> Optional[tuple[str, int]]:
    """(file, 1-based line) of data row ``index`` (0-based, files in load order); None where lines are not rows."""
    for path in files:
        lines = row_lines(path)
        if lines is None:
            return None
        if index < len(lines):
            return path, lines[index]
        index -= len(lines)
    return None


def row_lines(path: str) -> Optional[list[int]]:
    """The 1-based line where each data row of a JSON-lines or CSV file starts (blank lines hold none, a row spread
    over lines starts on its first); None for a file whose lines are not rows (parquet, a JSON array)."""
    suffix = Path(path).suffix
    if suffix == ".csv":
        with open(path, encoding="utf-8", errors="replace", newline="") as f:
            reader = csv.reader(f)
            starts, start = [], 1
            for record in reader:
                if is_record(record):
                    starts.append(start)
                start = reader.line_num + 1
        return starts[1:]  # the header is no data row
    if suffix not in TEXT_FILES:
        return None
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    try:  # value by value, as json_lines reads a file whose rows span several lines
        return None if text.lstrip().startswith("[") else [n for n, _ in json_values(text)]
    except json.JSONDecodeError:  # datasets read it, so it parses; if not, no line is better than a wrong one
        return None


def is_record(record: list[str]) -> bool:
    """A CSV line that is a row: pandas skips a blank line and one of only spaces (csv.reader gives ``['   ']``)."""
    return len(record) > 1 or bool(record and record[0].strip())
