"""What ``lit-lora`` installs around every Trainer it builds, besides the ``preemption:`` callback itself.

Each piece has one job; their settings are read from the ``preemption:`` section, where existing configs
have them (``atomic``, ``start_fresh_if_no_checkpoint``):

* ``make_saves_atomic``: the atomic ``CheckpointIO`` plugin (or DeepSpeed's directory wrapper), on the
  Trainer's strategy right after the Trainer is built (``preemption.atomic: false``: Lightning's own writes);
* ``preemption.resume_newest``: before ``fit`` without a ``ckpt_path``, a restarted SLURM job is pointed at its
  run's newest checkpoint (the highest global step among ``hpc_ckpt_N.ckpt`` and ``checkpoints/*.ckpt``;
  Lightning looks at the first only);
* ``RunDirectoryCheck``: at the start of ``fit``, refuse a run directory that would mix with the data, the
  model or an earlier run, and a requeued job without a checkpoint;
* ``PartialCheckpointCleanup``: at the start of ``fit``, delete what a killed save left behind;
* ``CSVHistoryResume``: when training starts, continue ``metrics.csv`` from the resumed step;
* ``StepSeed``: before every training micro-batch, seed torch from the run's seed, the micro-batch and the
  rank, so that a resumed run draws the dropout masks the uninterrupted run drew;
* ``StepAlignedCheckpoints``: a checkpoint written between two optimizer steps of an accumulation window
  resumes at the window's first micro-batch, so the resumed run takes the step the uninterrupted one took;
* ``PartialWindowCheck``: under DeepSpeed, which cannot end a step early, an epoch that ``limit_train_batches``
  cuts inside an accumulation window stops at the start of training with the fix (the training loader pads
  every other epoch to whole windows);
* ``FrozenFSDPUnitsRestored``: after each backward, an unsharded FSDP unit of frozen weights (one rank) has
  its parameters registered again, so the next checkpoint holds them.

The same for a Trainer built in Python::

    from lightning.pytorch import Trainer
    from lit_lora.cluster.preemption import PreemptionCheckpoint, resume_newest
    from lit_lora.cluster.runtime import install_atomic_saves, runtime_callbacks

    preemption = PreemptionCheckpoint()
    trainer = Trainer(callbacks=[*runtime_callbacks(preemption), preemption])
    install_atomic_saves(trainer, preemption)
    resume_newest(trainer)  # before trainer.fit(...) without a ckpt_path
"""

from __future__ import annotations

from typing import Any, Optional

from lightning.pytorch import Callback

from lit_lora.cluster.checkpoint_io import PartialCheckpointCleanup, make_saves_atomic
from lit_lora.cluster.csv_history import CSVHistoryResume
from lit_lora.cluster.fsdp_units import FrozenFSDPUnitsRestored
from lit_lora.cluster.launch_checks import RunDirectoryCheck
from lit_lora.cluster.step_aligned import PartialWindowCheck, StepAlignedCheckpoints
from lit_lora.cluster.step_seed import StepSeed


def runtime_callbacks(preemption: Optional[Any] = None) -> list[Callback]:
    """The callbacks that go with ``preemption`` (a ``PreemptionCheckpoint``, or ``None`` for the defaults).

    They belong before it in the Trainer's callbacks: its ``setup`` then runs after the run-directory check,
    in the order these ran when one callback did them all.
    """
    start_fresh = bool(getattr(preemption, "start_fresh_if_no_checkpoint", False))
    return [RunDirectoryCheck(start_fresh_if_no_checkpoint=start_fresh), PartialCheckpointCleanup(),
            CSVHistoryResume(), StepSeed(), StepAlignedCheckpoints(), PartialWindowCheck(),
            FrozenFSDPUnitsRestored()]


def install_atomic_saves(trainer: Any, preemption: Optional[Any] = None) -> None:
    """Make ``trainer``'s checkpoint writes atomic, unless ``preemption.atomic`` is off."""
    if getattr(preemption, "atomic", True):
        make_saves_atomic(trainer.strategy)
