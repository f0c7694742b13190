"""Shuffled, rank-sharded training orders that can start part-way into an epoch (a mid-epoch resume).

``ResumableSampler`` is the random order; ``LengthAwareSampler`` the base of the orders that read row lengths
(``length_grouping.LengthGroupedSampler``, ``packing.PackedSampler``). ``resumable.ResumableDataLoader`` saves
the position and hands it back through ``resume_at``::

    >>> sampler = ResumableSampler(list(range(10)), seed=0)
    >>> full = list(sampler)
    >>> sampler.resume_at(epoch=0, samples=4)
    >>> list(sampler) == full[4:]
    True
"""

from __future__ import annotations

from typing import Any, Iterator, Optional, Sequence

from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` whose next iteration can start ``skip`` samples into the epoch."""

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)
        self.skip = 0
        self.skip_epoch: Optional[int] = None  # the epoch ``skip`` was counted in

    order = "random"  # saved in the loader state: a resume must draw the same kind of order

    def epoch_indices(self) -> list[int]:
        """This rank's indices for ``self.epoch`` (a seeded permutation, sharded as ``DistributedSampler`` does)."""
        return list(super().__iter__())

    def resume_at(self, epoch: int, samples: int) -> None:
        """Start the next iteration ``samples`` into ``epoch``. If Lightning moves on to the next epoch
        instead (the checkpoint was written after the epoch's last batch), that epoch starts at its beginning."""
        self.set_epoch(epoch)
        self.skip, self.skip_epoch = samples, epoch

    def pending_skip(self) -> int:
        """Samples the next iteration skips (a mid-epoch resume), 0 otherwise."""
        return self.skip if self.epoch == self.skip_epoch else 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: the epoch is read at the first index drawn, not when the iterator is made. Lightning makes
        # the train iterator before it sets the next epoch when resuming from a checkpoint written at an epoch's end.
        indices = self.epoch_indices()
        skip = self.skip if self.epoch == self.skip_epoch else 0
        self.skip, self.skip_epoch = 0, None  # only the first iteration after a restore is shortened
        yield from indices[skip:]


class LengthAwareSampler(ResumableSampler):
    """A resumable, rank-sharded, shuffled order that also reads each row's length (length grouping, packing).

    ``setting`` names the option that chose the sampler, for errors: ``group_by_length`` or ``packing``.
    """

    def __init__(self, dataset: Dataset, lengths: Sequence[int], per_batch: int, setting: str, per_batch_name: str,
                 num_replicas: int = 1, rank: int = 0, seed: int = 0):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        if len(lengths) != len(dataset):
            raise ValueError(f"{setting}: {len(lengths)} lengths for {len(dataset)} rows")
        if per_batch < 1:
            raise ValueError(f"{setting}: {per_batch_name} must be >= 1, got {per_batch}")
        self.lengths = [int(n) for n in lengths]
