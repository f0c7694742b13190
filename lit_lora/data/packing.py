"""Packed training batches for causal-LM SFT: several rows per sequence, no attention across rows.

    lit-lora fit --config configs/demo.yaml --data.init_args.packing true

Rows are packed into sequences of at most ``max_length`` tokens by best-fit decreasing (as TRL's BFD:
rows sorted by length, longest first, each put in the fullest sequence it fits); here rows 4 and 3 share
a sequence of 8 tokens::

    >>> best_fit_decreasing([5, 3, 4, 2, 6], capacity=8)
    [[4, 3], [0, 1], [2]]

In a packed batch ``position_ids`` restart at 0 for every row, the first label of every row is -100
(nothing is predicted across a row boundary) and there is no ``attention_mask``: from the restarting
positions transformers builds a block-causal mask for sdpa / eager (``masking_utils.find_packed_sequence_indices``)
and FlashAttention runs varlen (``modeling_flash_attention_utils._is_packed_sequence``), so no row sees
another. A batch holds ``max_tokens_per_batch // max_length`` packed sequences (the last one fewer; the
default budget ``max_length × batch_size`` makes that ``batch_size``), stacked as ``(sequences, longest)``
for sdpa / eager and joined into one row for FlashAttention, whose varlen path needs a batch of one
(``lit_lora.models.packing_support.flattens``). Validation and test batches stay unpacked.

The plan of an epoch is a function of ``(seed, epoch)`` and the row lengths only: ties between rows of
equal length are broken by a seeded permutation and the sequences are shuffled with it, so a mid-epoch
resume rebuilds the same plan and ``ResumableSampler``'s ``skip`` drops the batches already trained. Ranks
share the epoch's sequences as ``DistributedSampler`` shares rows: padded to a multiple of the world size by
repeating the first ones (at most ``world - 1`` sequences trained twice, never whole batches), then each step's
``world × sequences_per_batch`` sequences split into one slice per rank, the last step's evenly. The number of
sequences, hence of batches, does not depend on the tie-breaking, so every epoch has the same length.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Optional, Sequence

import torch
from torch.utils.data import Dataset

from lit_lora.data.resumable import ResumableDataLoader, data_parallel_ranks, train_loader
from lit_lora.data.samplers import LengthAwareSampler

def best_fit_decreasing(lengths: Sequence[int], capacity: int,
                        order: Optional[Sequence[int]] = None) -> list[list[int]]:
    """Row indices packed into bins of at most ``capacity`` tokens: longest row first, each into the fullest
    bin with room. ``order`` breaks ties between rows of equal length (default: index order)."""
    rows = sorted(range(len(lengths)) if order is None else order, key=lambda i: -lengths[i])  # stable
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (tokens left, bin) of every bin not full, ascending
    for i in rows:
        n = int(lengths[i])
        if n > capacity:
            raise ValueError(f"packing: row {i} has {n} tokens, more than a packed sequence holds ({capacity})")
        at = bisect.bisect_left(room, (n, -1))  # the least room that still fits n: the fullest such bin
        if at == len(room):
            bins.append([i])
            left, b = capacity - n, len(bins) - 1
        else:
            left, b = room.pop(at)
            bins[b].append(i)
            left -= n
        if left > 0:
            bisect.insort(room, (left, b))
    return bins


class PackedSampler(LengthAwareSampler):
    """This rank's packed batches of an epoch, each a list of packed sequences (lists of row indices).

    Args:
        dataset: The rows (only its length is used).
        lengths: Tokens of each row, in dataset order.
        max_length: Tokens a packed sequence holds.
        sequences_per_batch: Packed sequences per batch (``max_tokens_per_batch // max_length``).
        num_replicas: Data-parallel world size.
        rank: This process's data-parallel rank.
        seed: Seed of the plan (plus the epoch).
    """

    def __init__(self, dataset: Dataset, lengths: Sequence[int], max_length: int, sequences_per_batch: int,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, lengths, sequences_per_batch, "packing", "sequences_per_batch",
                         num_replicas=num_replicas, rank=rank, seed=seed)
        self.max_length = max_length
        self.sequences_per_batch = sequences_per_batch
        # a resume must rebuild the same plan: the settings that shape it are part of the saved order
        self.order = f"packed(max_length={max_length}, sequences_per_batch={sequences_per_batch})"
        if num_replicas > 1:  # ranks share sequences, not whole batches (before: batches dealt in turn)
            self.order += ", ranks share sequences"
        self.num_sequences = len(best_fit_decreasing(self.lengths, max_length))  # the same every epoch
        self.total_size = math.ceil(self.num_sequences / num_replicas) * num_replicas  # sequences, padded
        self.num_samples = math.ceil(self.total_size / (sequences_per_batch * num_replicas))  # this rank's batches

    def __len__(self) -> int:
        return self.num_samples

    def sequences(self, epoch: int) -> list[list[int]]:
        """The packed sequences of ``epoch`` in training order."""
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        ties = torch.randperm(len(self.lengths), generator=generator).tolist()
        packed = best_fit_decreasing(self.lengths, self.max_length, order=ties)
        return [packed[i] for i in torch.randperm(len(packed), generator=generator).tolist()]

    def padded_sequences(self, epoch: int) -> list[list[int]]:
        """The sequences of ``epoch``, the first ones repeated up to a multiple of the world size."""
        packed = self.sequences(epoch)
        return packed + packed[:self.total_size - len(packed)]

    def rank_batches(self, epoch: int, rank: int) -> list[list[list[int]]]:
        """Rank ``rank``'s batches of ``epoch``: its slice of every step's sequences."""
        packed, world, k = self.padded_sequences(epoch), self.num_replicas, self.sequences_per_batch
        batches = []
        for start in range(0, len(packed), k * world):
            step = packed[start:start + k * world]
            share = len(step) // world  # k, fewer on the last step: a multiple of world, split evenly
            batches.append(step[rank * share:(rank + 1) * share])
        return batches

    def epoch_indices(self) -> list[list[list[int]]]:
        return self.rank_batches(self.epoch, self.rank)


class PackedRows(Dataset):
    """Rows fetched a batch at a time: ``rows[[[0, 4], [2]]]`` -> ``[[row 0, row 4], [row 2]]``."""

    def __init__(self, rows: Any):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, batch: list[list[int]]) -> list[list[dict]]:
        return [[self.rows[i] for i in sequence] for sequence in batch]


def packing_summary(lengths: Sequence[int], max_length: int, sequences_per_batch: int, seed: int = 0) -> dict:
    """Rows, packed sequences, fill ratio (non-pad tokens / slots) and batches of the packed plan."""
    sequences = len(best_fit_decreasing(lengths, max_length))
    return {"rows": len(lengths), "sequences": sequences, "fill": sum(lengths) / (sequences * max_length),
            "batches": math.ceil(sequences / sequences_per_batch)}


def packed_train_loader(dataset: Any, lengths: Sequence[int], max_length: int, sequences_per_batch: int,
                        seed: int, collate_fn: Any, trainer: Optional[Any] = None,
                        num_workers: int = 0) -> ResumableDataLoader:
    """A resumable loader of packed batches, sharded over the trainer's data-parallel ranks.

    The sampler yields whole batches (``batch_size=None``): Lightning sees a ``DistributedSampler`` and leaves
    it in place under DDP, and the loader's position stays the count of batches trained.
    """
    world, rank = data_parallel_ranks(trainer)
    sampler = PackedSampler(dataset, lengths, max_length, sequences_per_batch, num_replicas=world, rank=rank,
                            seed=seed)
    return train_loader(PackedRows(dataset), None, seed, trainer, sampler=sampler, collate_fn=collate_fn,
                        num_workers=num_workers)


def size_deepspeed_micro_batches(trainer: Optional[Any], sequences_per_batch: int) -> None:
    """Give a DeepSpeed strategy its ``train_micro_batch_size_per_gpu`` (DeepSpeed's throughput log) as the packed
    sequences per batch: Lightning otherwise reads the training loader's ``batch_sampler.batch_size``, and a loader
    of whole packed batches has no batch sampler (setting up stopped inside Lightning). A value the user's
    DeepSpeed config sets wins."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = getattr(trainer, "strategy", None)
    if isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict):
        strategy.config.setdefault("train_micro_batch_size_per_gpu", sequences_per_batch)
