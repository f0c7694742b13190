"""SLURM preemption: checkpoint at a step boundary, requeue, and resume exactly where the job stopped.

Lightning's own SIGUSR1 handler saves ``hpc_ckpt_N.ckpt`` from inside the signal handler, i.e. at
whatever line the signal interrupts (possibly between ``optimizer.step()`` and the progress counters,
or in the middle of a DDP collective on one rank only). ``PreemptionCheckpoint`` only records the
signal; at the end of the next optimizer step (after the last micro-batch of an accumulation window,
so no partly accumulated gradient is lost) all ranks agree (an ``any`` reduction) and save the same
step. The job stops at the start of the next batch, once the loop has logged that step and run the
validation and the checkpoints due at it: global rank 0 runs ``scontrol requeue``, and every rank exits.
A signal during the run's last step saves nothing: the run finishes and exports. The requeued job finds
``hpc_ckpt_N.ckpt`` in ``default_root_dir`` (Lightning's SLURM auto-resume; ``resume_newest`` picks a
periodic checkpoint of the run instead where one is newer) and, with the resumable train loader,
continues with the next unseen batch. Test it by hand on a running job::

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
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_lora.cluster import early_signals
from lit_lora.cluster.early_signals import under_slurm
from lit_lora.cluster.lightning_compat import cluster_environment, forget_lightning_sigterm, \
    handlers_lightning_restores, hpc_save_path
from lit_lora.cluster.run_dir import run_dir
from lit_lora.cluster.run_files import hpc_checkpoints
from lit_lora.cluster.step_aligned import stops_after_this_step

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
        self.saved: Optional[str] = None  # the checkpoint saved at the last step's end; the job stops next batch
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
            self.saved = None
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
            again = ("run the sweep command again, which resumes this point from it" if os.environ.get(
                "SLURM_ARRAY_TASK_ID") else f"resubmit with --ckpt_path {path}")
            log.warning("[lit-lora] preemption: not requeueing after SIGTERM: SLURM sends it when it cancels "
                        "(scancel), times out or preempts the job, and a requeue would bring a cancelled job back. "
                        "A job requeued by SLURM (scontrol requeue, PreemptMode=REQUEUE) comes back by itself and "
                        "resumes; otherwise %s (preemption.requeue_on_sigterm: true requeues)", again)
            return False
        return True

    # ---- the step boundary -----------------------------------------------------------------------
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx) -> None:
        if self.saved is not None:
            self._stop(trainer, self.saved)
        self._step_before_batch = trainer.global_step

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx) -> None:
        """Save at an optimizer step's end; the job stops at the next batch's start (``_stop``).

        Stopping here would skip what the loop and the checkpoint callbacks (which Lightning runs after this one)
        still do for this step: its periodic checkpoint, its validation and the checkpoint after it, which the
        resumed job does not redo. The step that ends the run is not saved: the run finishes and exports.
        """
        if self.signum is None:
            return
        if trainer.global_step == self._step_before_batch:
            return  # inside an accumulation window: saving now would lose the partly accumulated gradient
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        if ends_the_run(trainer):
            return  # a requeued job would find nothing to train, and never export (teardown says so)
        path = hpc_save_path(trainer)
        trainer.save_checkpoint(path)
        trainer.strategy.barrier("lit_lora_preemption_saved")
        if trainer.is_global_zero:
            print(f"[lit-lora] preemption: saved {path} at global step {trainer.global_step}", flush=True)
        self.saved = path

    def _stop(self, trainer: Trainer, path: str) -> None:
        """Requeue (global rank 0) and exit every rank; the loggers are finalised also when the requeue fails.

        The requeue comes last: ``scontrol requeue`` ends the running job within SLURM's ``KillWait``.
        """
        failure = None
        try:
            if trainer.is_global_zero and self._should_requeue(path):
                failure = self._requeue()
        finally:
            for logger in trainer.loggers:
                logger.finalize("preempted")
        if failure:
            raise RuntimeError(f"{failure}; the checkpoint is saved: resubmit with --ckpt_path {path} to continue "
                               "(the same sbatch command alone gets a new job id, hence a new run directory "
                               "from step 0)")
        raise Requeued(0)

    @staticmethod
    def _requeue() -> Optional[str]:
        """``scontrol requeue`` this job; returns why it failed, or None."""
        job_id = os.environ.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{job_id}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job_id else os.environ["SLURM_JOB_ID"]
        result = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
        if result.returncode != 0:
            return f"scontrol requeue {job_id} failed ({result.returncode}): {result.stderr.strip()}"
        print(f"[lit-lora] preemption: requeued SLURM job {job_id}", flush=True)
        return None


def ends_the_run(trainer: Trainer) -> bool:
    """The optimizer step that just ended is the run's last: ``max_steps``, a stop asked for, or the last batch of
    the last epoch (``max_epochs``)."""
    if stops_after_this_step(trainer):
        return True
    max_epochs = trainer.max_epochs
    if max_epochs is None or max_epochs < 0 or trainer.current_epoch + 1 < max_epochs:
        return False
    return trainer.fit_loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches


# ---- the restart -----------------------------------------------------------------------------------------
def checkpoint_step(path: Path) -> Optional[int]:
    """The global step a checkpoint (a file, or a DeepSpeed directory) was saved at; None when it cannot be read."""
    if path.is_dir():
        path = next(iter(sorted(path.glob("*/*model_states.pt"))), path)
    try:
        checkpoint = torch.load(path, map_location="cpu", mmap=True, weights_only=False)  # no tensor data read
    except Exception:  # noqa: BLE001 - unreadable: not a complete checkpoint
        return None
    step = checkpoint.get("global_step") if isinstance(checkpoint, dict) else None
    return None if step is None else int(step)


def run_checkpoints(trainer: Trainer) -> list[Path]:
    """The complete checkpoints the run's checkpoint callbacks wrote (a save in progress has a hidden name)."""
    default = run_dir(trainer) / "checkpoints"  # AdapterCheckpoint's, and ModelCheckpoint's under a pinned logger
    folders = {Path(getattr(c, "dirpath", None) or default) for c in trainer.checkpoint_callbacks}
    return sorted(p for folder in folders for p in folder.glob("*.ckpt") if not p.name.startswith("."))


def resume_newest(trainer: Trainer, env: Optional[dict] = None) -> Optional[Path]:
    """Before ``fit`` of a restarted SLURM job: resume from the run's checkpoint with the highest global step.

    Lightning's auto-resume looks at ``hpc_ckpt_N.ckpt`` only. A requeued job that wrote periodic checkpoints
    after resuming from one and then died unsaved (a node failure) would train those steps again; here it
    resumes from the newest of them (``trainer.ckpt_path``). Returns the checkpoint, logged on rank 0.
    """
    env = os.environ if env is None else env
    hpc = hpc_checkpoints(trainer.default_root_dir)
    if not under_slurm(env) or trainer.ckpt_path or not (hpc or int(env.get("SLURM_RESTART_COUNT") or 0)):
        return None
    steps = {p: checkpoint_step(p) for p in [*hpc, *run_checkpoints(trainer)]}
    steps = {p: s for p, s in steps.items() if s is not None}
    if not steps:
        return None  # RunDirectoryCheck stops a requeued job without a checkpoint
    # a tie goes to the newest hpc_ckpt_N (Lightning's own pick), else to the latest written
    newest = max(steps, key=lambda p: (steps[p], p in hpc, hpc.index(p) if p in hpc else p.stat().st_mtime))
    if not hpc or newest != hpc[-1]:
        trainer.ckpt_path = str(newest)
    if rank_zero_only.rank == 0:
        older = ""
        if hpc and newest != hpc[-1]:  # what Lightning would have loaded
            seen = f"step {steps[hpc[-1]]}" if hpc[-1] in steps else "unreadable"
            older = f", newer than {hpc[-1].name} ({seen})"
        log.info("[lit-lora] restarted SLURM job: resuming from %s at global step %d, the run's newest "
                 "checkpoint%s", newest, steps[newest], older)
    return newest
