"""Checkpoints that are either complete or absent: a kill during a save never leaves one that resume would pick.

Lightning's SLURM auto-resume takes the highest ``hpc_ckpt_N.ckpt`` in ``default_root_dir``, so a
half-written one would be loaded (or crash the requeued job). Both kinds of checkpoint are written
under a hidden temporary name first and renamed when complete:

* a file (``torch.save``: DDP, FSDP with ``state_dict_type: full``, single device) through
  ``AtomicCheckpointIO``, a Lightning ``CheckpointIO`` plugin: temp file, fsync, ``os.replace``;
* a directory (DeepSpeed: every rank writes its shards into it) through ``AtomicDirectorySave``:
  every rank writes into the temp directory, a barrier, global rank 0 renames it, a barrier.

Temporary names start with ``.partial-`` and never contain ``hpc_ckpt_`` (Lightning parses the digits
of any name containing it). This guards against a killed process (preemption past its grace time),
not a power loss: DeepSpeed's shard files are not fsynced. Global rank 0 renames the directory, so the
checkpoint directory must be on a filesystem all nodes share (as the sbatch scripts' run directory is).

``lit-lora`` installs them on every Trainer it builds (``make_saves_atomic``; ``preemption.atomic: false``
turns it off), whatever the strategy, where the strategy lets it:

* strategies that save through their ``CheckpointIO`` (single device, DDP, FSDP with ``state_dict_type:
  full``, ModelParallel's full checkpoints): Lightning's default ``TorchCheckpointIO`` is replaced by
  ``AtomicCheckpointIO``; a ``CheckpointIO`` given in ``trainer.plugins`` (and XLA's) is kept as given;
* DeepSpeed does not use a ``CheckpointIO`` (its engine writes a directory of shards): its
  ``save_checkpoint`` is wrapped in ``AtomicDirectorySave`` instead;
* FSDP / ModelParallel with sharded checkpoints write a directory themselves too and are left as
  Lightning writes them (not atomic).

``PartialCheckpointCleanup`` (also always installed) removes what a killed save left when the next
job starts::

    from lightning.pytorch import Trainer
    from lit_lora.cluster.checkpoint_io import AtomicCheckpointIO, PartialCheckpointCleanup
    trainer = Trainer(plugins=[AtomicCheckpointIO()], callbacks=[PartialCheckpointCleanup()])  # what lit-lora does
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy

log = logging.getLogger("lit_lora")
PARTIAL_PREFIX = ".partial-"


def _fsync_directory(path: Path) -> None:
    """Make a rename inside ``path`` survive a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process umask, read from ``/proc`` where it can be: ``os.umask`` can only read it by setting it,
    which other threads creating files at that moment would see."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def umask_file_mode() -> int:
    """The mode a plain ``open()`` gives a new file (0666 less the umask): what the run's other files get."""
    return 0o666 & ~_umask()


def files_follow_umask(directory: Path) -> None:
    """Give the files in ``directory`` the mode ``open()`` would: safetensors' ``save_file`` (under peft's and
    transformers' ``save_pretrained``) writes 0600, which the group sharing a run directory cannot read."""
    mode = umask_file_mode()
    for path in Path(directory).iterdir():
        if path.is_file() and not path.is_symlink():
            os.chmod(path, mode)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to a hidden temp file in the target directory, fsync, then ``os.replace``.

    Remote paths (``s3://``, ``gs://``, ...) go to Lightning's own fsspec writer. The temp file gets the mode a plain
    ``open()`` would give (``mkstemp``'s is 0600), so group members of a shared run directory can read checkpoints.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):  # before ``Path``, which turns ``s3://b/x`` into ``s3:/b/x``
            return super().save_checkpoint(checkpoint, str(path), storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=PARTIAL_PREFIX, suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), umask_file_mode())
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)


def replace_directory(src: Path, dst: Path) -> None:
    """Rename the complete directory ``src`` to ``dst``, replacing an older ``dst`` (e.g. ``last.ckpt``).

    Two renames: a kill between them leaves the older copy as ``.partial-old-<id>.<name>``, which
    ``remove_partial_checkpoints`` moves back to ``<name>``.
    """
    old = None
    if dst.exists():
        old = dst.with_name(f"{PARTIAL_PREFIX}old-{uuid.uuid4().hex}.{dst.name}")
        os.replace(dst, old)
    os.replace(src, dst)
    _fsync_directory(dst.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class AtomicDirectorySave:
    """Wraps a strategy's ``save_checkpoint`` that writes a directory (DeepSpeed) so it appears only when complete.

    Called on every rank, like the method it wraps. ``strategy`` provides ``broadcast``, ``barrier`` and
    ``is_global_zero`` (any Lightning strategy).
    """

    def __init__(self, save: Callable[..., None], strategy: Any):
        self.save = save
        self.strategy = strategy

    def __call__(self, checkpoint: dict, filepath: Union[str, Path], storage_options: Optional[Any] = None) -> None:
        final = Path(self.strategy.broadcast(str(filepath)))
        tmp = final.parent / self.strategy.broadcast(f"{PARTIAL_PREFIX}{uuid.uuid4().hex}.tmp")
        if self.strategy.is_global_zero:
            final.parent.mkdir(parents=True, exist_ok=True)
        self.strategy.barrier("lit_lora_checkpoint_dir")
        self.save(checkpoint, tmp, storage_options)  # every rank writes its shards
        self.strategy.barrier("lit_lora_checkpoint_written")
        if self.strategy.is_global_zero:
            replace_directory(tmp, final)
        self.strategy.barrier("lit_lora_checkpoint_renamed")


def remove_partial_checkpoints(directory: Union[str, Path]) -> list[Path]:
    """Delete the ``.partial-*`` leftovers of saves a kill interrupted; returns (and logs) what was removed.

    An older copy whose replacement never arrived (``replace_directory`` interrupted) is moved back.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    for old in sorted(directory.glob(f"{PARTIAL_PREFIX}old-*")):
        name = old.name.split(".", 2)[-1]  # .partial-old-<id>.<name>
        if not (directory / name).exists():
            os.replace(old, directory / name)
            log.warning("[lit-lora] restored %s: the save replacing it was interrupted", directory / name)
    removed = sorted(directory.glob(f"{PARTIAL_PREFIX}*"))
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    if removed:
        log.warning("[lit-lora] removed %d partial checkpoint(s) left by an interrupted save in %s: %s",
                    len(removed), directory, ", ".join(p.name for p in removed))
    return removed


def make_saves_atomic(strategy) -> None:
    """Route ``strategy``'s checkpoint writes through ``AtomicCheckpointIO`` / ``AtomicDirectorySave`` (once).

    DeepSpeed writes a directory itself, bypassing ``CheckpointIO``: its ``save_checkpoint`` is wrapped.
    Otherwise only Lightning's default ``TorchCheckpointIO`` is replaced (see the module docstring).
    """
    if isinstance(strategy, DeepSpeedStrategy):
        if not isinstance(strategy.save_checkpoint, AtomicDirectorySave):
            strategy.save_checkpoint = AtomicDirectorySave(strategy.save_checkpoint, strategy)
    elif type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


class PartialCheckpointCleanup(Callback):
    """At the start of ``fit``, delete what killed saves left behind, in the run directory and every
    checkpoint directory (global rank 0; the other ranks wait)."""

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            dirs = {trainer.default_root_dir, *(c.dirpath for c in trainer.checkpoint_callbacks if c.dirpath)}
            for directory in dirs:
                remove_partial_checkpoints(directory)
        trainer.strategy.barrier("lit_lora_partials_removed")
