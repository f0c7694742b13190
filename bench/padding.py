"""Padding of each training batching over whole epochs, without training: deterministic, seconds to run.

    python bench/padding.py                        # 4000 stdlib rows (the training bench's data), 5 epochs
    python bench/padding.py --rows 540 --epochs 3  # the training bench's --epoch run

The rows, tokenizer and tokenisation are the training bench's (``bench/train_throughput.py``: stdlib rows, a BPE
trained on them, lit-lora's alpaca prompt, ``max_length`` 512); every batching orders the same training split:

    lit-lora grouped     lit_lora.data.length_grouping.LengthGroupedSampler, batch 8 (lit-lora's default)
    transformers grouped transformers.trainer_pt_utils.LengthGroupedSampler, batch 8 (HF Trainer group_by_length)
    random               a seeded permutation, batch 8, padded to the longest row of each batch
    lit-lora packing     best-fit decreasing into 512-token sequences (lit_lora.data.packing), 8 per batch

Padding = pad slots / all slots of the padded (or packed) batches of an epoch; the median over ``--epochs``
epochs (seeds 42, 43, …) is printed with the range.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Callable, Optional

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent)]  # the bench modules, and the working tree's lit_lora

from stdlib_rows import describe, stdlib_rows, write_jsonl  # noqa: E402
from tables import table  # noqa: E402

BATCH, MAX_LENGTH = 8, 512


def batch_padding(order: list[int], lengths: list[int]) -> float:
    """Pad share of the batches of ``BATCH`` consecutive indices of ``order``, each padded to its longest row."""
    batches = [order[s:s + BATCH] for s in range(0, len(order), BATCH)]
    slots = sum(max(lengths[i] for i in b) * len(b) for b in batches)
    return 1 - sum(lengths[i] for b in batches for i in b) / slots


def lit_lora_grouped(lengths: list[int], seed: int) -> float:
    from lit_lora.data.length_grouping import LengthGroupedSampler

    return batch_padding(list(LengthGroupedSampler(range(len(lengths)), lengths, BATCH, seed=seed)), lengths)


def transformers_grouped(lengths: list[int], seed: int) -> float:
    import torch
    from transformers.trainer_pt_utils import LengthGroupedSampler

    sampler = LengthGroupedSampler(BATCH, lengths=lengths, generator=torch.Generator().manual_seed(seed))
    return batch_padding(list(sampler), lengths)


def random_order(lengths: list[int], seed: int) -> float:
    import torch

    return batch_padding(torch.randperm(len(lengths), generator=torch.Generator().manual_seed(seed)).tolist(), lengths)


def packed(lengths: list[int], seed: int) -> float:
    from lit_lora.data.packing import packing_summary

    return 1 - packing_summary(lengths, MAX_LENGTH, BATCH, seed=seed)["fill"]


BATCHINGS: dict[str, Callable[[list[int], int], float]] = {
    "lit-lora grouped": lit_lora_grouped, "transformers grouped": transformers_grouped,
    "random": random_order, "lit-lora packing": packed,
}


def training_lengths(rows: list[dict], work: Path, vocab_size: int) -> list[int]:
    """Token counts of lit-lora's training split of ``rows`` with a BPE trained on them (as the training bench)."""
    from train_throughput import build_model

    from lit_lora.data import InstructionDataModule

    data = write_jsonl(rows, work / "rows.jsonl")
    model, _ = build_model(rows, work / "model", hidden=64, layers=1, vocab_size=vocab_size)  # only its tokenizer
    dm = InstructionDataModule(source=str(data), max_length=MAX_LENGTH, batch_size=BATCH, seed=42,
                               tokenizer_name_or_path=str(model))
    dm.setup("fit")
    return [len(ids) for ids in dm.datasets["train"]["input_ids"]]


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000, help="stdlib rows (the training bench's default: 4000)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (seeds) per batching")
    parser.add_argument("--vocab-size", type=int, default=8192, help="BPE vocabulary (the training bench's: 8192)")
    args = parser.parse_args(argv)
    rows = stdlib_rows(args.rows)
    print(f"data: {describe(rows)}", flush=True)
    with tempfile.TemporaryDirectory(prefix="lit-lora-padding-") as work:
        lengths = training_lengths(rows, Path(work), args.vocab_size)
    print(f"train split: {len(lengths)} rows, tokens per row median {statistics.median(lengths):.0f}; batch {BATCH}, "
          f"max_length {MAX_LENGTH}; {args.epochs} epoch(s)\n")
    out = [["batching", "padding (median)", "min", "max"]]
    for name, padding in BATCHINGS.items():
        shares = [padding(lengths, 42 + epoch) for epoch in range(args.epochs)]
        out.append([name, f"{statistics.median(shares):.2%}", f"{min(shares):.2%}", f"{max(shares):.2%}"])
    print(table(out))


if __name__ == "__main__":
    main()
