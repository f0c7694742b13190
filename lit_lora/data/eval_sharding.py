"""Evaluation rows split over data-parallel ranks, every row counted exactly once.

A ``DistributedSampler`` pads the last round with repeated rows so every rank runs the same number of
batches (ranks must step together: a ZeRO-3 forward gathers weights from all of them). Here the
padding rows still run, but carry ``counted = False``; the modules leave them out of the loss, the
metrics and ``predictions.jsonl`` (``counted_mask`` / ``without_uncounted_labels``)::

    sampler = CountedEvalSampler(dataset, num_replicas=2, rank=0)      # 7 rows: rank 0 gets 4, rank 1 3 + 1 repeat
    loader = DataLoader(CountedRows(dataset), sampler=sampler, batch_size=4, collate_fn=collate)
    batch["counted"]                                                   # tensor([True, True, True, False]) on rank 1
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import torch
from torch.utils.data import Dataset, DistributedSampler

COUNTED = "counted"


class CountedRows(Dataset):
    """``dataset``'s rows with ``counted``; index ``len(dataset) + i`` is row ``i`` again, as a repeat."""

    def __init__(self, dataset: Any):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        repeat = index >= len(self.dataset)
        return {**self.dataset[index - len(self.dataset) if repeat else index], COUNTED: not repeat}


class CountedEvalSampler(DistributedSampler):
    """``DistributedSampler`` in order, whose padding indices point at ``CountedRows``' repeats."""

    def __init__(self, dataset: Any, num_replicas: int, rank: int):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)

    def __iter__(self) -> Iterator[int]:
        size = len(self.dataset)
        padded = list(range(size)) + [size + i % size for i in range(self.total_size - size)]
        return iter(padded[self.rank:self.total_size:self.num_replicas])


def counted_mask(batch: dict) -> Optional[torch.Tensor]:
    """(batch,) bool: the rows that count; ``None`` when every row does (one rank, or no ``counted`` key)."""
    mask = batch.get(COUNTED)
    if mask is None or bool(mask.all()):
        return None
    return mask.bool()


def counted_indices(batch: dict) -> torch.Tensor:
    """Indices of the rows that count (every row when nothing is repeated), to select predictions with."""
    mask = batch.get(COUNTED)
    if mask is None:
        return torch.arange(len(batch["input_ids"]))
    return torch.nonzero(mask.bool().cpu(), as_tuple=True)[0]


def without_uncounted_labels(batch: dict, ignore_index: int = -100) -> dict:
    """``batch`` whose repeated rows have no labels, so they add nothing to a summed loss or its count."""
    mask = counted_mask(batch)
    if mask is None:
        return batch
    labels = batch["labels"].clone()
    labels[~mask.to(labels.device)] = ignore_index
    return {**batch, "labels": labels}
