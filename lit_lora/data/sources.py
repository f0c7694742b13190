"""Load a dataset from the hub or from local json / jsonl / parquet / csv files, and check its columns.

    from lit_lora.data.sources import load_rows
    rows = load_rows("lit_lora/data/samples/python_codes_25k.jsonl", required=["instruction", "output"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from datasets import Dataset, load_dataset

BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv"}
SAMPLES_DIR = Path(__file__).parent / "samples"


def local_files(source: str) -> Optional[list[str]]:
    """The data files ``source`` names (a file, a directory or a bundled sample name), or None for a hub id."""
    path = Path(source)
    if not path.exists() and (SAMPLES_DIR / source).exists():
        path = SAMPLES_DIR / source
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix in BUILDERS)
        if not files:
            raise FileNotFoundError(f"{source}: directory holds no {', '.join(BUILDERS)} files")
        return files
    if source.startswith(("/", "./", "../", "~")) or path.suffix in BUILDERS:
        raise FileNotFoundError(f"{source}: no such file or directory (and it is not a bundled sample: "
                                f"{', '.join(sorted(p.name for p in SAMPLES_DIR.glob('*.jsonl')))})")
    return None  # a hub dataset id such as nyu-mll/multi_nli


def load_rows(source: str, split: str = "train", subset: Optional[str] = None,
              required: Sequence[str] = ()) -> Dataset:
    """Rows of ``source`` (hub id, file, directory or bundled sample name) with ``required`` columns checked."""
    files = local_files(source)
    if files is not None:
        suffixes = {Path(f).suffix for f in files}
        unknown = suffixes - set(BUILDERS)
        if unknown or len({BUILDERS[s] for s in suffixes}) != 1:
            raise ValueError(f"{source}: expected files of one kind among {', '.join(BUILDERS)}, got {sorted(suffixes)}")
        dataset = load_dataset(BUILDERS[suffixes.pop()], data_files=files, split="train")
        where = files[0] if len(files) == 1 else source
    else:
        dataset = load_dataset(source, subset, split=split)
        where = f"{source} (split {split})"
    missing = [c for c in required if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{where}: missing column {', '.join(repr(c) for c in missing)} "
            f"(required: {', '.join(required)}; found: {', '.join(dataset.column_names)})"
        )
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
