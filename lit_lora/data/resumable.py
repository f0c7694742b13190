"""A training DataLoader that resumes mid-epoch: no batch repeated, none skipped.

Lightning 2.6 restores loop counters from a mid-epoch checkpoint, but a plain ``DataLoader`` starts
its epoch again from the first batch (Lightning only warns), and the sampler's epoch is not restored
before the first batch is prefetched. This loader is ``_Stateful``: Lightning stores its
``state_dict()`` in the checkpoint (``loops.fit_loop.state_dict.combined_loader``) and calls
``load_state_dict()`` before it creates the iterator, so the resumed epoch draws the same
permutation and starts right after the last trained batch::

    loader = ResumableDataLoader(dataset, batch_size=8, seed=42, collate_fn=collate)
    loader.trainer = trainer          # set by train_loader (below) for TextDataModule.train_dataloader
    state = loader.state_dict()       # {"epoch": 0, "batches": 5, ...}
    loader.load_state_dict(state)     # the next iteration skips the 5 trained batches

The sampler is a ``DistributedSampler`` (rank / world size from the trainer), so Lightning does not
replace it under DDP, and the order depends only on ``seed + epoch``, never on the global RNG.

Batches come in optimizer steps: the loader reads the micro-batches of one step (``accumulate_grad_batches``
of them, aligned with Lightning's accumulation) before yielding the first, and gives each the labels of
the whole step as ``batch["step_labels"]``, the divisor of the token-normalised loss
(``lit_lora.token_loss``). Where the strategy accumulates by itself (DeepSpeed), every epoch ends on a whole
window: see ``unlabelled_tail``.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from lit_lora.data.collators import IGNORE_INDEX
from lit_lora.data.length_grouping import LengthGroupedSampler
from lit_lora.data.samplers import ResumableSampler
from lit_lora.errors import CheckpointSettingsMismatch

__all__ = ["ResumableDataLoader", "ResumableSampler", "optimizer_step_windows", "train_loader", "training_rows",
           "unlabelled_tail"]

log = logging.getLogger("lit_lora")


class ResumableDataLoader(DataLoader):
    """DataLoader over a ``ResumableSampler`` whose position is saved in Lightning checkpoints.

    The position is the trainer's count of training batches started in this epoch
    (``batch_progress.current.ready``): a checkpoint written at ``on_train_batch_end`` or after
    validation counts exactly the batches whose step ran. Prefetched but untrained batches do not count.
    A ``sampler`` that yields whole batches goes with ``batch_size=None`` (one sample per batch).
    """

    def __init__(self, dataset: Dataset, batch_size: Optional[int], seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, lengths: Optional[Sequence[int]] = None, sampler: Optional[ResumableSampler] = None,
                 accumulation: int = 1, **kwargs: Any):
        kwargs.pop("shuffle", None)
        # a given sampler may yield whole batches (packing, with batch_size=None: lit_lora/data/packing.py)
        if sampler is None and lengths is None:
            sampler = ResumableSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        elif sampler is None:  # batches of similar lengths (lit_lora/data/length_grouping.py)
            sampler = LengthGroupedSampler(dataset, lengths, batch_size, num_replicas=num_replicas, rank=rank,
                                           seed=seed, accumulation=accumulation)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, **kwargs)
        self.trainer: Optional[Any] = None
        self.rows: Optional[dict] = None  # training_rows(...) of the tokenised rows, set by the datamodule
        self.said_padding = False

    def __len__(self) -> int:
        return super().__len__() + self.window_padding()

    def __iter__(self) -> Iterator[Any]:
        # A generator, like the sampler's: the position is read when the first batch is drawn, after Lightning
        # has set the epoch, and before the inner iterator starts (iterating the sampler consumes the position).
        first = self.sampler.pending_skip() // self.samples_per_batch
        accumulate, limit = 1, len(self)
        if self.trainer is not None:
            accumulate = self.trainer.accumulate_grad_batches
            limit = min(limit, self.trainer.num_training_batches)  # limit_train_batches
        batches, padding = super().__iter__(), self.window_padding()
        if padding:
            self.say_padding(padding, accumulate)
            batches = unlabelled_tail(batches, padding)
        yield from optimizer_step_windows(batches, accumulate, first, limit)

    def window_padding(self) -> int:
        """Unlabelled micro-batches that end each epoch on a whole accumulation window where the strategy
        accumulates by itself (DeepSpeed, see ``unlabelled_tail``); 0 elsewhere."""
        if not getattr(getattr(self.trainer, "strategy", None), "handles_gradient_accumulation", False):
            return 0
        return -super().__len__() % self.trainer.accumulate_grad_batches

    def say_padding(self, padding: int, accumulate: int) -> None:
        if not self.said_padding:
            self.said_padding = True
            log.info("[lit-lora] DeepSpeed accumulates gradients itself and cannot end a step early: each epoch's "
                     "%d micro-batches per rank are followed by %d without labels, completing a last window of %d "
                     "(they add nothing to the loss or the gradients)", super().__len__(), padding, accumulate)

    @property
    def samples_per_batch(self) -> int:
        """Sampler items per batch: ``batch_size``, or 1 where the sampler yields whole batches."""
        return self.batch_size or 1

    def batches_trained(self) -> int:
        if self.trainer is None:
            return 0
        return int(self.trainer.fit_loop.epoch_loop.batch_progress.current.ready)

    def state_dict(self) -> dict:
        return {"epoch": int(self.sampler.epoch), "batches": self.batches_trained(), "batch_size": self.batch_size,
                "num_replicas": self.sampler.num_replicas, "seed": self.sampler.seed, "order": self.sampler.order,
                "accumulation": self.grouped_accumulation(), "epoch_batches": self.epoch_batches(), "rows": self.rows}

    def epoch_batches(self) -> int:
        """Batches of a whole epoch (``limit_train_batches`` included)."""
        return int(min(len(self), self.trainer.num_training_batches)) if self.trainer is not None else len(self)

    def grouped_accumulation(self) -> int:
        """Micro-batches per optimizer step that the order groups rows by (1 where it does not)."""
        return getattr(self.sampler, "accumulation", 1)

    def load_state_dict(self, state: dict) -> None:
        """Continue after the checkpoint's last trained batch. Mid-epoch that needs the order the checkpoint drew;
        at an epoch's end the next epoch starts afresh, so the world size, batch size and order may change."""
        if state.get("seed", self.sampler.seed) != self.sampler.seed:  # first: another seed draws other rows too
            raise CheckpointSettingsMismatch(
                f"the checkpoint drew its batch order with seed {state['seed']}, this run with {self.sampler.seed}:"
                " a resume needs the same data.seed (it also draws the validation split)")
        if 0 < int(state["batches"]) < state.get("epoch_batches", math.inf):  # absent: written before it was saved
            self.check_same_order(state)
        self.sampler.resume_at(int(state["epoch"]), int(state["batches"]) * self.samples_per_batch)

    def check_same_order(self, state: dict) -> None:
        """Refuse, in one line, a mid-epoch resume whose settings would draw another order of batches."""
        saved_rows = state.get("rows")  # absent: written before the rows were recorded
        if saved_rows and self.rows and saved_rows != self.rows:
            raise CheckpointSettingsMismatch(
                f"the checkpoint trained on {saved_rows['count']} rows of {saved_rows['tokens']} tokens, this run "
                f"has {self.rows['count']} rows of {self.rows['tokens']} tokens (or the same counts of other "
                "lengths): a mid-epoch resume needs the same training rows, so the same data.source, max_samples / "
                "sample_fraction, val_fraction, max_length, template and tokenizer (at an epoch's end they may "
                "change)")
        if state.get("num_replicas", self.sampler.num_replicas) != self.sampler.num_replicas:
            raise CheckpointSettingsMismatch(
                f"the checkpoint was written by {state['num_replicas']} data-parallel ranks, this run has "
                f"{self.sampler.num_replicas}: a mid-epoch resume needs the same world size (nodes × devices)"
            )
        if state.get("order", self.sampler.order) != self.sampler.order:
            raise CheckpointSettingsMismatch(
                f"the checkpoint drew a {state['order']} batch order, this run a {self.sampler.order} one: a "
                "mid-epoch resume needs the same data.group_by_length, data.packing, data.max_length and "
                "data.max_tokens_per_batch, and a lit-lora that draws that order the same way")
        if state.get("batch_size", self.batch_size) != self.batch_size:
            raise CheckpointSettingsMismatch(
                f"the checkpoint used batch_size {state['batch_size']}, this run {self.batch_size}: a mid-epoch "
                "resume needs the same data.batch_size")
        if state.get("accumulation", 1) != self.grouped_accumulation():  # absent: written before steps were grouped
            raise CheckpointSettingsMismatch(
                f"the checkpoint grouped rows by length into optimizer steps of {state.get('accumulation', 1)} "
                f"micro-batches, this run into steps of {self.grouped_accumulation()}: a mid-epoch resume with "
                "data.group_by_length needs the same trainer.accumulate_grad_batches")


def training_rows(lengths: Sequence[int]) -> dict:
    """What identifies the tokenised training rows for a resume: their count, tokens and a digest of the
    lengths in row order (content-derived, so a copy of the data elsewhere is the same data)."""
    digest = hashlib.blake2b(",".join(map(str, lengths)).encode(), digest_size=8).hexdigest()
    return {"count": len(lengths), "tokens": int(sum(lengths)), "digest": digest}


def optimizer_step_windows(batches: Iterable[Any], accumulate: int, first: int = 0,
                           limit: float = math.inf) -> Iterator[Any]:
    """Yield ``batches`` (batch ``first`` onwards of an epoch of ``limit``), each dict batch carrying the
    ``labels`` of every micro-batch of its optimizer step as ``step_labels``.

    Steps end where Lightning's accumulation ends them: after batch indices ``accumulate - 1``,
    ``2 * accumulate - 1`` … and after the epoch's last batch.
    """
    iterator = iter(batches)
    index = first
    while True:
        end = index - index % accumulate + accumulate
        size = min(end, limit) - index if index < limit else accumulate  # past the limit: Lightning stops pulling
        window = list(itertools.islice(iterator, int(size)))
        if not window:
            return
        labels = [b.get("labels") if isinstance(b, dict) else None for b in window]
        for batch in window:
            if isinstance(batch, dict) and all(label is not None for label in labels):
                batch["step_labels"] = labels
            yield batch
        index += len(window)


def unlabelled_tail(batches: Iterable[dict], count: int) -> Iterator[dict]:
    """Yield ``batches``, then ``count`` copies of the last one with every label ignored.

    Lightning ends an epoch's last optimizer step early, after fewer micro-batches than
    ``accumulate_grad_batches``, but not under DeepSpeed, whose engine counts micro-batches across epochs and
    steps after every ``accumulate_grad_batches`` of them. Its steps would then drift from Lightning's (which
    steps the LR schedule, logs and checkpoints) and mix two epochs' windows, each normalised by its own tokens.
    An epoch padded to whole windows keeps both counts equal: the copies have no label, so their loss and
    gradients are zero and the step's token count (``step_labels``) is that of its real micro-batches.
    """
    last = None
    for last in batches:
        yield last
    if last is None:
        return
    if not isinstance(last, dict) or "labels" not in last:
        raise TypeError(f"a training batch must be a dict with 'labels' to end an epoch on a whole accumulation "
                        f"window under DeepSpeed, got {type(last).__name__}")
    unlabelled = {key: value for key, value in last.items() if key != "step_labels"}
    unlabelled["labels"] = torch.full_like(last["labels"], IGNORE_INDEX)
    for _ in range(count):
        yield dict(unlabelled)


def train_loader(dataset: Dataset, batch_size: Optional[int], seed: int, trainer: Optional[Any] = None,
                 **kwargs: Any) -> ResumableDataLoader:
    """A ``ResumableDataLoader`` sharded over the trainer's data-parallel ranks (one rank without a trainer).

    ``lengths=[…]`` (one per row) groups rows of similar length into batches (``LengthGroupedSampler``);
    packed batches have their own loader (``lit_lora.data.packing.packed_train_loader``).
    """
    world, rank = data_parallel_ranks(trainer)
    if kwargs.get("lengths") is not None:  # length grouping forms whole optimizer steps
        kwargs.setdefault("accumulation", trainer.accumulate_grad_batches if trainer is not None else 1)
    loader = ResumableDataLoader(dataset, batch_size=batch_size, seed=seed, num_replicas=world, rank=rank, **kwargs)
    loader.trainer = trainer
    return loader


def data_parallel_ranks(trainer: Optional[Any]) -> tuple[int, int]:
    """``(world size, this rank)`` of the trainer; ``(1, 0)`` without one."""
    return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
