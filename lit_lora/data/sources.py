"""Load a dataset from the hub or from local json / jsonl / parquet / csv files, and check its columns.

    from lit_lora.data.sources import load_rows
    rows = load_rows("lit_lora/data/samples/python_codes_25k.jsonl", required=["instruction", "output"])

``datasets`` reads the files; what it cannot read, or reads into the wrong type, stops here with a
``DataFileError`` (``lit_lora.data.file_errors``) that names the file, line and field, before any tokenisation:

    codes.jsonl: line 3, column 71: invalid JSON (Expecting ':' delimiter)
    codes.jsonl: line 4, field 'input': byte 0xe9 is not UTF-8 (save the file as UTF-8)
    codes.jsonl: column 'output' holds int64 values; expected text (a string, or null for empty); first at data row 0 (0-based; line 1): 7
    codes.jsonl: line 7, field 'output': missing from the row (every row gives instruction, output; null for an empty value); it has 'outptu', which is no field (did you mean 'output'?)

Data rows are counted from 0 in load order (files one after another), lines from 1 in the file.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Optional, Sequence, Union

from datasets import Dataset, Value, concatenate_datasets, load_dataset

from lit_lora.errors import IncompatibleConfig
from lit_lora.data.csv_options import csv_read_options, duplicate_column, long_row
from lit_lora.data.file_errors import (TEXT_DTYPES, TEXT_FILES, DataFileError, check_json_rows, check_text_columns,
                                      check_utf8, probably_meant, short_row, unreadable)

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".zip")
SAMPLES_DIR = Path(__file__).parent / "samples"
log = logging.getLogger("lit_lora")


def local_files(source: str) -> Optional[list[str]]:
    """The data files ``source`` names (a file, a directory or a bundled sample name), or None for a hub id."""
    path = Path(source).expanduser()
    if not path.exists() and (SAMPLES_DIR / source).exists():
        path = SAMPLES_DIR / source
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return directory_files(source, path)
    if source.startswith(("/", "./", "../", "~")) or path.suffix in BUILDERS:
        raise DataFileError(f"{source}: no such file or directory (and it is not a bundled sample: "
                                f"{', '.join(sorted(p.name for p in SAMPLES_DIR.glob('*.jsonl')))})")
    return None  # a hub dataset id such as nyu-mll/multi_nli


def refuse_local_split(key: str, split: Optional[str], source: str, read_as: str) -> None:
    """Refuse the split ``key`` names where ``source`` is a local file: ``datasets`` reads a file whole (``read_as``),
    so the split was ignored without a word, and a ``validation_split`` of the training file validated on its rows."""
    if split is None or local_files(source) is None:
        return
    raise IncompatibleConfig(
        f"data.init_args.{key}: {split!r} names a split of a hub dataset, but {source} is a local file, which has no "
        f"splits: it is read whole as {read_as}. Drop {key}; give validation rows as validation_source (a file), "
        "or leave them to val_fraction (held out of the training rows)")


def directory_files(source: str, path: Path) -> list[str]:
    """The data files of a directory; one that looks like data under another name (``part2.JSONL``,
    ``part3.jsonl.gz``) is an error, anything else (a README, notes) a skip counted in the log."""
    entries = sorted(path.iterdir())
    misnamed = [p.name for p in entries if p.suffix not in BUILDERS and (p.suffix.lower() in BUILDERS or (
        p.suffix.lower() in COMPRESSED and len(p.suffixes) > 1 and p.suffixes[-2].lower() in BUILDERS))]
    if misnamed:
        raise DataFileError(f"{source}: {', '.join(misnamed)}: lit-lora reads {', '.join(BUILDERS)} files, "
                            f"uncompressed and named in lower case: rename or decompress, or move them out")
    files = [str(p) for p in entries if p.suffix in BUILDERS and p.is_file()]
    if not files:
        raise DataFileError(f"{source}: directory holds no {', '.join(BUILDERS)} files")
    others = [p.name + ("/" if p.is_dir() else "") for p in entries if str(p) not in files]
    if others:
        log.info("[lit-lora] %s: reading %d data file%s; skipped %d other entr%s: %s", source, len(files),
                 "s" * (len(files) > 1), len(others), "ies" if len(others) > 1 else "y", ", ".join(others))
    return files


def load_rows(source: str, split: str = "train", subset: Optional[str] = None,
              required: Sequence[str] = (), text_columns: Sequence[str] = (),
              row_may_omit: Sequence[str] = ()) -> Dataset:
    """Rows of ``source`` (hub id, file, directory or bundled sample name) with ``required`` columns checked
    (a JSON row may leave out those in ``row_may_omit``: read as null, which means empty there; a file or
    dataset none of whose rows give one gets it as a column of nulls, as if every row had left it out).

    ``text_columns`` must hold strings (or nulls, read as empty): a column of numbers or lists is an
    error naming its first such row, raised here rather than as an ``AttributeError`` mid-tokenisation.
    """
    files = local_files(source)
    if files is not None:
        dataset = load_local(source, files, text_columns, [c for c in required if c not in row_may_omit],
                             row_may_omit)
        where = files[0] if len(files) == 1 else source
    else:
        dataset = load_hub_dataset(source, subset, split)
        where = f"{source} (split {split})"
    missing = [c for c in required if c not in dataset.column_names and c not in row_may_omit]
    if missing:
        raise DataFileError(
            f"{where}: missing column {', '.join(repr(c) for c in missing)} "
            f"(required: {', '.join(required)}; found: {', '.join(dataset.column_names)})"
            f"{meant(missing, required, dataset)}"
        )
    dataset = add_omitted_columns(dataset, row_may_omit, where)
    check_text_columns(dataset, [c for c in text_columns if c in dataset.column_names], where, files)
    return dataset


def load_hub_dataset(source: str, subset: Optional[str], split: str) -> Dataset:
    """``load_dataset`` of a hub id; one that cannot be had (offline, no such dataset, or a local path mistyped:
    ``data/my_codes`` has a hub id's form) is one line naming both places looked in."""
    try:
        return load_dataset(source, subset, split=split)
    except OSError as err:  # datasets' DatasetNotFoundError and ConnectionError are OSErrors
        reason = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise DataFileError(f"{source}: no such local file or directory ({Path(source).absolute()}), and no hub "
                            f"dataset of that id to be had ({type(err).__name__}: {reason[:200]})") from err


def meant(missing: Sequence[str], required: Sequence[str], dataset: Dataset) -> str:
    """`` (did you mean 'output' for 'outptu'?)``: the found columns that look like misspelt missing ones."""
    unknown = [c for c in dataset.column_names if c not in required]
    pairs = [(c, found) for c in missing if (found := probably_meant(c, unknown))]
    return f" (did you mean {'; '.join(f'{c!r} for {found!r}' for c, found in pairs)}?)" if pairs else ""


# ---- local files ------------------------------------------------------------------------------------
def load_local(source: str, files: list[str], text_columns: Sequence[str] = (),
               required: Sequence[str] = (), may_omit: Sequence[str] = ()) -> Dataset:
    """``datasets``' reading of local files, with what it cannot read named by file and line.

    The files of a directory are read and checked one by one, then joined: read together, ``datasets``
    casts every file to the first one's column types, turning a list or a number in a later file into text.
    A JSON row that leaves out a ``required`` key the file's other rows give is an error naming its line
    (``datasets`` would read it as null, an empty value dropped from training). A ``may_omit`` column no row
    of one file gives, where another file's rows do, is added to it as nulls, so the files join."""
    suffixes = {Path(f).suffix for f in files}
    unknown = suffixes - set(BUILDERS)
    if unknown or len({BUILDERS[s] for s in suffixes}) != 1:
        raise DataFileError(f"{source}: expected files of one kind among {', '.join(BUILDERS)}, "
                            f"got {sorted(suffixes)}")
    if len(files) > 1:
        parts = [load_local(path, [path], text_columns, required) for path in files]
        given = {c: part.features[c] for part in reversed(parts) for c in part.column_names if c in may_omit}
        return join_files(source, files, [add_omitted_columns(part, given, path) for path, part in zip(files, parts)])
    path, builder = files[0], BUILDERS[suffixes.pop()]
    if Path(path).suffix in TEXT_FILES:
        check_utf8(path)
    if builder == "csv" and (problem := duplicate_column(path) or long_row(path)):
        raise DataFileError(f"{path}: {problem}")
    # CSV has no types: keep text columns as written ("042" stays "042", not the int 42; "None" stays "None")
    options = csv_read_options(path, text_columns) if builder == "csv" else {}
    try:
        with datasets_errors_unlogged():
            dataset = load_dataset(builder, data_files=files, split="train", **options)
    except Exception as err:  # DatasetGenerationError, ArrowInvalid, pandas' ParserError, ...
        raise unreadable(source, files, err) from err
    if builder == "csv" and (problem := short_row(path)):  # pandas reads a short row as empty cells
        raise DataFileError(f"{path}: {problem}")
    dataset = text_as_strings(dataset, text_columns) if builder == "csv" else dataset
    if builder == "json":
        check_json_rows(path, [c for c in required if c in dataset.column_names], text_columns)
    check_text_columns(dataset, [c for c in text_columns if c in dataset.column_names], path, files)
    return dataset


def add_omitted_columns(dataset: Dataset, columns: Union[Sequence[str], dict], where: str) -> Dataset:
    """``columns`` that no row gives, added as text nulls: what ``datasets`` reads for a JSON row that leaves
    one out, so a file where every row leaves ``input`` out trains as one where some do (no input). A dict
    gives each column's type (another file's, which the joined files must share); text otherwise."""
    for column in [c for c in columns if c not in dataset.column_names]:
        log.info("[lit-lora] %s: no row gives %r: read as empty in every row", where, column)
        feature = columns[column] if isinstance(columns, dict) else Value("string")
        dataset = dataset.add_column(column, [None] * len(dataset)).cast_column(column, feature)
    return dataset


@contextlib.contextmanager
def datasets_errors_unlogged():
    """``datasets``' file readers log a failure before raising it ("Failed to load JSON … in row 1", counted
    from another origin than the file's lines): lit-lora names the file and line itself (``unreadable``)."""
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def join_files(source: str, files: list[str], parts: list[Dataset]) -> Dataset:
    """The rows of ``files`` one after another; files whose columns differ are named, not cast to agree."""
    for path, part in zip(files[1:], parts[1:]):
        if set(part.column_names) != set(parts[0].column_names):
            raise DataFileError(f"{source}: {path} has columns {', '.join(part.column_names)} where {files[0]} has "
                                f"{', '.join(parts[0].column_names)} (give every file the same columns)")
    try:
        return concatenate_datasets(parts)
    except ValueError as err:  # datasets: "features can't be aligned"
        first = parts[0].features
        path, part = next(((p, d) for p, d in zip(files, parts) if d.features != first), (files[-1], parts[-1]))
        column = next((c for c in first if part.features[c] != first[c]), "?")
        raise DataFileError(f"{source}: column {column!r} is {part.features[column]} in {path} but "
                            f"{first[column]} in {files[0]} (give the column one type in every file)") from err


def text_as_strings(dataset: Dataset, text_columns: Sequence[str]) -> Dataset:
    """An all-empty CSV text column comes back as float nulls: make it the (empty) text it is."""
    for column in text_columns:
        feature = dataset.features.get(column)
        if isinstance(feature, Value) and feature.dtype not in TEXT_DTYPES \
                and dataset.data.column(column).null_count == len(dataset):
            dataset = dataset.cast_column(column, Value("string"))
    return dataset


def take_subset(dataset: Dataset, max_samples: Optional[int], sample_fraction: Optional[float], seed: int) -> Dataset:
    """First ``max_samples`` rows, and/or a seeded ``sample_fraction`` sample (e.g. 0.1 for 10%)."""
    if sample_fraction is not None:
        if not 0 < sample_fraction <= 1:
            raise ValueError(f"sample_fraction must be in (0, 1], got {sample_fraction}")
        n = max(1, round(len(dataset) * sample_fraction))
        dataset = dataset.shuffle(seed=seed).select(range(n))
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    return dataset
