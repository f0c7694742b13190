"""Dropout that a resumed run draws exactly as the uninterrupted run drew it.

Lightning keeps no random-number state in a checkpoint, and restoring one would not be enough: what runs
between a save and the next step differs on a resume (a new epoch's DataLoader iterator draws its seed from
torch's generator, for one). So ``StepSeed`` seeds torch (CPU and every CUDA device) at the start of every
training micro-batch from the run's seed (``seed_everything``), the micro-batch's index across epochs (which
Lightning restores on a resume) and the rank: dropout masks, LoRA dropout included, then depend on those
three numbers only, as when a step's key is folded from the step number in JAX. ``lit-lora`` adds it to
every Trainer it builds (``cluster/runtime.py``)::

    from lit_lora.cluster.step_seed import step_seed
    step_seed(base=42, micro_batch=7, rank=1)   # the same number on every run, another for every argument
"""

from __future__ import annotations

import hashlib
import os

import torch
from lightning.pytorch import Callback


def step_seed(base: int, micro_batch: int, rank: int) -> int:
    """A 63-bit seed for one micro-batch of one rank (a hash, so nearby arguments give unrelated seeds)."""
    digest = hashlib.blake2b(f"{base}:{micro_batch}:{rank}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class StepSeed(Callback):
    """Seed torch before every training micro-batch (see the module docstring)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        base = int(os.environ.get("PL_GLOBAL_SEED", 0))  # what seed_everything set (LightningCLI: seed_everything)
        torch.manual_seed(step_seed(base, trainer.fit_loop.total_batch_idx, trainer.global_rank))
