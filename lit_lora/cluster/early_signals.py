"""SLURM's requeue signal and SIGTERM recorded from the first line of ``lit-lora fit``, before the seconds of imports.

``PreemptionCheckpoint`` takes the signals over when the CLI builds it; a signal that came earlier, while
Python was still importing torch and Lightning, would otherwise have killed the job unsaved. This module
imports nothing heavy, so ``lit_lora.commands.entry`` can install it at once::

    from lit_lora.cluster import early_signals
    early_signals.record()           # under SLURM: SIGUSR1 / SIGTERM are kept from now on
    early_signals.hand_over()        # -> (the signals received, the handlers they replaced); recording stops

``PreemptionCheckpoint`` calls ``hand_over`` and treats those signals as its own; a run that does not take them
(preemption disabled, a command other than ``fit``) calls ``release``, which puts the handlers back and
delivers a kept signal to them.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any, Mapping, Optional

SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
INTERACTIVE_JOB_NAMES = ("bash", "interactive")  # `srun --pty bash`, `salloc`: a shell, not a task to requeue


def under_slurm(env: Optional[Mapping[str, str]] = None) -> bool:
    """Launched as a task of a SLURM job (Lightning's ``SLURMEnvironment.detect()``, without its warning about
    ``srun``), not an interactive shell: where lit-lora checks the allocation, keeps the requeue signal, handles
    preemption and pins the run directory to the job."""
    env = os.environ if env is None else env
    return "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES
_received: set[int] = set()
_replaced: dict[int, Any] = {}


def _keep(signum, frame) -> None:
    _received.add(signum)


def record(env: Optional[Mapping[str, str]] = None) -> None:
    """Keep SIGUSR1 / SIGTERM under SLURM (a task of a job, not an interactive shell); elsewhere do nothing."""
    if not under_slurm(env):
        return
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in SIGNALS:
        _replaced.setdefault(signum, signal.getsignal(signum))
        signal.signal(signum, _keep)


def hand_over() -> tuple[set[int], dict[int, Any]]:
    """The signals kept so far and the handlers ``record`` replaced; the caller installs its own handlers."""
    received, replaced = set(_received), dict(_replaced)
    _received.clear()
    _replaced.clear()
    return received, replaced


def release() -> None:
    """Put the replaced handlers back; a kept signal goes to them now."""
    received, replaced = hand_over()
    for signum, previous in replaced.items():
        if signal.getsignal(signum) is _keep:
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
    for signum in sorted(received):
        signal.raise_signal(signum)
