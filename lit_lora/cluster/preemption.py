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

SIGTERM (what SLURM sends when it cancels, times out or preempts a job, ``KillWait`` seconds before
SIGKILL) is handled the same way, except that the job is not requeued: after ``scancel`` a requeue from
inside the job succeeds and would bring the cancelled job back. A job preempted with ``PreemptMode=REQUEUE``
is requeued by SLURM itself and resumes from the checkpoint; ``requeue_on_sigterm: true`` requeues anyway.

Under SLURM the handlers are installed when the callback is built, before the data is tokenised and the
model loaded: a signal then is kept, and the job saves at the end of its first optimizer step (requeueing
as above). A signal during the CLI's imports and argument parsing, before that, is kept from the first line of
``lit-lora fit`` (``lit_lora.cluster.early_signals``) and handed to the callback.
Outside SLURM nothing is installed and Lightning's own SIGTERM handling applies.

This callback only turns a signal into a step-boundary save and a requeue. What goes with it in
``lit-lora fit`` are separate callbacks the CLI installs beside it (``lit_lora.cluster.runtime``): atomic
checkpoint writes and the removal of partial ones (``lit_lora.cluster.checkpoint_io``: a kill during a save
leaves the previous ``hpc_ckpt_N.ckpt`` as the newest complete one), the run-directory checks at the start
of ``fit`` (``lit_lora.cluster.launch_checks.RunDirectoryCheck``) and the continued ``metrics.csv``
(``lit_lora.cluster.csv_history``). Their settings stay under ``preemption:`` (``atomic``,
``start_fresh_if_no_checkpoint``), where existing configs have them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Any, Iterable, Optional

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_lora.cluster import early_signals
from lit_lora.cluster.early_signals import under_slurm
from lit_lora.cluster.lightning_compat import cluster_environment, forget_lightning_sigterm, \
    handlers_lightning_restores, hpc_save_path, log_step_metrics_now

log = logging.getLogger("lit_lora")


class Requeued(SystemExit):
    """Raised on every rank after the preemption checkpoint is saved; exits the process with status 0."""


def signal_names(signals: Iterable[int]) -> str:
    return ", ".join(sorted(signal.Signals(s).name for s in signals))


class PreemptionCheckpoint(Callback):
    """On SLURM's requeue signal or SIGTERM: save ``hpc_ckpt_N.ckpt`` at the next step boundary, requeue, exit.

    Args:
        enabled: Handle the requeue signal and SIGTERM (only under SLURM with Lightning's ``auto_requeue`` on).
        requeue: Run ``scontrol requeue $SLURM_JOB_ID`` after saving (off: save and exit only).
        atomic: Write every checkpoint atomically (``lit_lora.cluster.checkpoint_io``: files, and DeepSpeed
            directories). Read by the CLI, which installs the atomic writes (``lit_lora.cluster.runtime``).
        requeue_on_sigterm: Requeue after SIGTERM too (off: save and exit; SLURM also sends SIGTERM on ``scancel``).
        start_fresh_if_no_checkpoint: A requeued job that finds no ``hpc_ckpt_N.ckpt`` (its node failed before
            the first save) starts again from step 0 with a warning, instead of stopping with an error. Read by
            the CLI for ``RunDirectoryCheck``.
    """

    def __init__(self, enabled: bool = True, requeue: bool = True, atomic: bool = True,
                 requeue_on_sigterm: bool = False, start_fresh_if_no_checkpoint: bool = False):
        self.enabled = enabled
        self.requeue = requeue
        self.atomic = atomic
        self.requeue_on_sigterm = requeue_on_sigterm
        self.start_fresh_if_no_checkpoint = start_fresh_if_no_checkpoint
        self.requested = False
        self.received: set[int] = set()
        self.signum: Optional[int] = None
        self._step_before_batch: Optional[int] = None
        self._replaced: dict[int, Any] = {}  # signal -> the handler ours replaced, put back when fit ends
        if enabled and under_slurm():
            # now, not in setup: tokenisation and model loading come first, and a signal then must not kill the job
            early, replaced = early_signals.hand_over()  # what came during the imports (lit_lora.commands.entry)
            self._replaced.update(replaced)  # the handlers before those, put back when fit ends
            self._take((signal.SIGUSR1, signal.SIGTERM))
            self.received |= early
            self.requested = bool(self.received)
        else:
            early_signals.release()

    # ---- set-up ----------------------------------------------------------------------------------
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            self._release(redeliver=True)
            return
        environment = cluster_environment(trainer)
        if self.enabled and isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # Installed before Lightning registers its handlers, so Lightning does not add its own
            # save-inside-the-handler for this signal (it skips signals that already have a handler).
            self.signum = environment.requeue_signal or signal.SIGUSR1
            handled = (self.signum, signal.SIGTERM)
            self._release([s for s in self._replaced if s not in handled], redeliver=True)
            self._take(handled)
            if self.requested:
                log.info("[lit-lora] preemption: %s received before training started; saving hpc_ckpt_N.ckpt at the "
                         "end of the first optimizer step, then stopping", signal_names(self.received))
        else:
            self._release(redeliver=True)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_sigterm_back(trainer)

    def on_sanity_check_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._take_sigterm_back(trainer)

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self.requested and self.signum is not None:
            log.info("[lit-lora] preemption: %s received after the last optimizer step; the run finished instead",
                     signal_names(self.received))
        self._release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """Put the replaced handlers back, also in what Lightning's teardown (which follows) restores."""
        originals = handlers_lightning_restores(trainer)
        for signum, previous in self._replaced.items():
            if signum in originals and previous is not None:
                originals[signum] = previous
        self._release()

    # ---- signals ---------------------------------------------------------------------------------
    def _on_signal(self, signum, frame) -> None:
        self.requested = True
        self.received.add(signum)

    def _take(self, signals: Iterable[int]) -> None:
        """Record ``signals`` from now on (in the main thread only, where Python runs signal handlers)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in signals:
            self._replaced.setdefault(signum, signal.getsignal(signum))
            signal.signal(signum, self._on_signal)

    def _release(self, signals: Optional[Iterable[int]] = None, redeliver: bool = False) -> None:
        """Put back the handlers ours replaced; ``redeliver``: a signal recorded for nothing goes to them now."""
        for signum in list(self._replaced if signals is None else signals):
            if signum not in self._replaced:
                continue
            previous = self._replaced.pop(signum)
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
            if redeliver and signum in self.received:
                self.received.discard(signum)
                self.requested = bool(self.received)
                signal.raise_signal(signum)

    def _take_sigterm_back(self, trainer: Trainer) -> None:
        """Replace the SIGTERM handler Lightning registers after ``setup`` by ours again.

        Lightning's stops ``fit`` after the current batch, mid accumulation window and without a checkpoint;
        it calls ours too, so a SIGTERM until now is recorded here and saved at the next step boundary.
        """
        if self.signum is None or signal.SIGTERM not in self._replaced:
            return
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._on_signal)
            forget_lightning_sigterm(trainer)

    def _should_requeue(self, path: str) -> bool:
        """Requeue after the requeue signal; after SIGTERM alone only with ``requeue_on_sigterm``."""
        if not self.requeue:
            return False
        if self.received == {signal.SIGTERM} and not self.requeue_on_sigterm:
            log.warning("[lit-lora] preemption: not requeueing after SIGTERM: SLURM sends it when it cancels "
                        "(scancel), times out or preempts the job, and a requeue would bring a cancelled job back. "
                        "A job preempted with PreemptMode=REQUEUE comes back by itself and resumes; otherwise "
                        "resubmit with --ckpt_path %s (preemption.requeue_on_sigterm: true requeues)", path)
            return False
        return True

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
        path = hpc_save_path(trainer)
        trainer.save_checkpoint(path)
        trainer.strategy.barrier("lit_lora_preemption_saved")
        if trainer.is_global_zero:
            print(f"[lit-lora] preemption: saved {path} at global step {trainer.global_step}", flush=True)
            if self._should_requeue(path):
                self._requeue()
        # the loop logs this step's metrics only after on_train_batch_end: log them now, as it would
        log_step_metrics_now(trainer)
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
