"""SLURM preemption: checkpoint at a step boundary, requeue, and resume exactly where the job stopped.

Lightning's own SIGUSR1 handler saves ``hpc_ckpt_N.ckpt`` from inside the signal handler, i.e. at
whatever line the signal interrupts (possibly between ``optimizer.step()`` and the progress counters,
or in the middle of a DDP collective on one rank only). ``PreemptionCheckpoint`` only records the
signal; at the end of the next optimizer step (after the last micro-batch of an accumulation window,
so no partly accumulated gradient is lost) all ranks agree (an ``any`` reduction) and save the same
step, global rank 0 runs ``scontrol requeue``, and every rank exits. The requeued job finds
``hpc_ckpt_N.ckpt`` in ``default_root_dir`` (Lightning's SLURM auto-resume) and, with the resumable
train loader, continues with the next unseen batch. Test it by hand on a running job::

    scancel --signal=USR1 <jobid>                       # what --signal=SIGUSR1@90 sends before the time limit
    scontrol update JobId=<jobid> StartTime=now         # release the requeued job (held with a BeginTime)

Checkpoints are written atomically (``lit_lora.checkpoint_io``: a file or, under DeepSpeed, a directory
renamed into place when complete): a kill during a save leaves the previous ``hpc_ckpt_N.ckpt`` as
the newest complete one, never a partial one that resume would pick.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
from typing import Any, Optional

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.strategies import DeepSpeedStrategy

from lit_lora.checkpoint_io import AtomicCheckpointIO, AtomicDirectorySave, remove_partial_checkpoints
from lit_lora.csv_history import ResumableCSVLogger
from lit_lora.launch_checks import check_requeued_resume

log = logging.getLogger("lit_lora")


def make_saves_atomic(strategy) -> None:
    """Route ``strategy``'s checkpoint writes through ``lit_lora.checkpoint_io`` (once)."""
    if isinstance(strategy, DeepSpeedStrategy):  # writes a directory itself, bypassing checkpoint_io
        if not isinstance(strategy.save_checkpoint, AtomicDirectorySave):
            strategy.save_checkpoint = AtomicDirectorySave(strategy.save_checkpoint, strategy)
    elif type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


class Requeued(SystemExit):
    """Raised on every rank after the preemption checkpoint is saved; exits the process with status 0."""


class PreemptionCheckpoint(Callback):
    """On SLURM's requeue signal: save ``hpc_ckpt_N.ckpt`` at the next step boundary, requeue, exit.

    Args:
        enabled: Handle the requeue signal (only under SLURM with Lightning's ``auto_requeue`` on).
        requeue: Run ``scontrol requeue $SLURM_JOB_ID`` after saving (off: save and exit only).
        atomic: Write every checkpoint atomically (``lit_lora.checkpoint_io``: files, and DeepSpeed directories).
    """

    def __init__(self, enabled: bool = True, requeue: bool = True, atomic: bool = True):
        self.enabled = enabled
        self.requeue = requeue
        self.atomic = atomic
        self.requested = False
        self.signum: Optional[int] = None
        self._step_before_batch: Optional[int] = None

    # ---- set-up ----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.atomic:
            make_saves_atomic(trainer.strategy)
        if stage != "fit":
            return
        check_requeued_resume(trainer.ckpt_path, trainer.default_root_dir)
        environment = trainer._accelerator_connector.cluster_environment
        if self.enabled and isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # Installed before Lightning registers its handlers, so Lightning does not add its own
            # save-inside-the-handler for this signal (it skips signals that already have a handler).
            self.signum = environment.requeue_signal or signal.SIGUSR1
            signal.signal(self.signum, self._on_signal)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Delete what killed saves left behind: in the run directory and every checkpoint directory."""
        if trainer.is_global_zero:
            dirs = {trainer.default_root_dir, *(c.dirpath for c in trainer.checkpoint_callbacks if c.dirpath)}
            for directory in dirs:
                remove_partial_checkpoints(directory)
        trainer.strategy.barrier("lit_lora_partials_removed")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Continue a kept ``metrics.csv`` from the step training resumes at (nothing kept on a fresh start)."""
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.keep_history_before(trainer.global_step)

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    # ---- the step boundary -----------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        if self.signum is None:
            return
        if trainer.global_step == self._step_before_batch:
            return  # inside an accumulation window: saving now would lose the partly accumulated gradient
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)
        trainer.strategy.barrier("lit_lora_preemption_saved")
        if trainer.is_global_zero:
            print(f"[lit-lora] preemption: saved {path} at global step {trainer.global_step}", flush=True)
            if self.requeue:
                self._requeue()
        # the loop logs this step's metrics only after on_train_batch_end: log them now, as it would
        trainer._logger_connector.on_batch_end()
        trainer._logger_connector.update_train_step_metrics()
        for logger in trainer.loggers:
            logger.finalize("preempted")
        raise Requeued(0)

    @staticmethod
    def _requeue() -> None:
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job_id else os.environ["SLURM_JOB_ID"]
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"scontrol requeue {job_id} failed ({result.returncode}): {result.stderr.strip()}; "
                               "the checkpoint is saved: resubmit the same sbatch command to continue")
        print(f"[lit-lora] preemption: requeued SLURM job {job_id}", flush=True)


def pin_log_dir(trainer_config: Any, env: Optional[dict] = None) -> None:
    """Under SLURM, log straight into ``default_root_dir`` instead of a new ``version_N`` per (re)start.

    Lightning's default logger numbers its directory, so a requeued job would write its config,
    checkpoints and adapter to ``version_1`` while its checkpoint sits beside ``version_0``. With the
    sbatch scripts' ``default_root_dir=runs/<exp>/<SLURM_JOB_ID>`` every restart shares one run directory.
    Only the default logger (``logger: true`` / unset) is replaced, by a ``ResumableCSVLogger`` that
    continues ``metrics.csv`` across restarts; a configured logger is left alone.
    """
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID") or trainer_config.get("logger") not in (None, True):
        return
    from jsonargparse import Namespace

    root = trainer_config.get("default_root_dir") or os.getcwd()
    trainer_config["logger"] = Namespace(class_path="lit_lora.csv_history.ResumableCSVLogger",
                                         init_args=Namespace(save_dir=str(root), name="", version="",
                                                             flush_logs_every_n_steps=1))
