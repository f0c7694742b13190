"""Instruction rows built from Python's standard library, in the python-codes-25k JSONL schema.

Every function of the standard library that has a docstring becomes one row: ``instruction`` is the
docstring's first line, ``output`` the function's source in a ```python block (as python-codes-25k
answers are written), ``input`` is empty and ``text`` joins instruction and output as that dataset does.
Nothing is downloaded; the rows depend on the Python version that reads its own standard library (about
6,300 rows on CPython 3.11), so the benches print the version and a digest of the rows they used.

Parsing the whole standard library takes about 15 s on a laptop core, so the rows are kept in a cache file
keyed by the interpreter, the standard library's files (paths, sizes, modification times) and the length
limits: ``$LIT_LORA_BENCH_CACHE``, else ``$XDG_CACHE_HOME/lit-lora/bench``, else ``~/.cache/lit-lora/bench``.
A changed standard library gets a new key; deleting the folder is always safe.

    python bench/stdlib_rows.py /tmp/rows.jsonl --rows 4000
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Iterator, Optional

SKIP_PARTS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
MIN_CHARS, MAX_CHARS = 80, 2000  # function source lengths kept: python-codes-25k answers are mostly this size


def stdlib_files() -> list[Path]:
    """The standard library's ``.py`` files (tests and installed packages left out), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if not SKIP_PARTS & set(p.relative_to(root).parts))


def function_rows(path: Path, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> Iterator[dict]:
    """One row per documented function of ``path`` whose source is ``min_chars``..``max_chars`` long."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    lines = source.splitlines(keepends=True)
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        instruction = next((line.strip() for line in (doc or "").splitlines() if line.strip()), "")
        if len(instruction) < 10:
            continue
        code = textwrap.dedent("".join(lines[node.lineno - 1:node.end_lineno])).rstrip()
        if not min_chars <= len(code) <= max_chars:
            continue
        output = f"```python\n{code}\n```"
        yield {"instruction": instruction, "input": "", "output": output, "text": f"{instruction} {output}"}


def stdlib_rows(rows: Optional[int] = None, seed: int = 0, min_chars: int = MIN_CHARS,
                max_chars: int = MAX_CHARS) -> list[dict]:
    """Deduplicated rows in a seeded random order; the first ``rows`` of them (all when ``None``)."""
    found = cached_function_rows(min_chars, max_chars)
    random.Random(seed).shuffle(found)
    if rows is not None and rows > len(found):
        print(f"[stdlib_rows] asked for {rows} rows, the standard library of Python "
              f"{sys.version.split()[0]} gives {len(found)}: using them all", file=sys.stderr)
    return found[:rows] if rows is not None else found


def cached_function_rows(min_chars: int, max_chars: int) -> list[dict]:
    """Every deduplicated row of the standard library in file order, from the cache when its key matches."""
    files = stdlib_files()
    stats = [(str(p), s.st_size, s.st_mtime_ns) for p in files for s in [p.stat()]]
    key = hashlib.sha256(json.dumps([sys.version, min_chars, max_chars, *stats]).encode()).hexdigest()[:16]
    cache = cache_dir() / f"stdlib-rows-{key}.jsonl"
    if cache.is_file():
        return read_jsonl(cache)
    seen: set[tuple[str, str]] = set()
    found: list[dict] = []
    for path in files:
        for row in function_rows(path, min_chars, max_chars):
            if (row["instruction"], row["output"]) not in seen:
                seen.add((row["instruction"], row["output"]))
                found.append(row)
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")  # two benches at once never read half a file
    try:
        write_jsonl(found, partial).replace(cache)
    except OSError as err:  # a read-only home: the rows are still right, only the next run parses again
        print(f"[stdlib_rows] not cached ({err}); set LIT_LORA_BENCH_CACHE to a writable folder", file=sys.stderr)
    return found


def cache_dir() -> Path:
    if os.environ.get("LIT_LORA_BENCH_CACHE"):
        return Path(os.environ["LIT_LORA_BENCH_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lit-lora" / "bench"


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def digest(rows: list[dict]) -> str:
    """Short hash of the rows, to tell whether two runs used the same data."""
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:12]


def describe(rows: list[dict]) -> str:
    chars = sorted(len(r["output"]) for r in rows)
    median = chars[len(chars) // 2] if chars else 0
    return (f"{len(rows)} rows from the standard library of Python {sys.version.split()[0]} "
            f"(digest {digest(rows)}, median output {median} chars)")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="JSONL file to write")
    parser.add_argument("--rows", type=int, default=None, help="how many rows (default: all)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the row order")
    args = parser.parse_args(argv)
    rows = stdlib_rows(args.rows, args.seed)
    write_jsonl(rows, args.out)
    print(f"wrote {describe(rows)} to {args.out}")


if __name__ == "__main__":
    main()
