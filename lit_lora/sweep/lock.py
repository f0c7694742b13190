"""One ``lit-lora sweep`` at a time writes a sweep directory's ``sweep.json`` / ``points.txt`` and submits its points.

Two commands on one sweep (a second terminal, a resubmission while the first still submits) would otherwise
each read ``sweep.json``, add their points under the same indices or submit the same points as two array
jobs (two runs in one point directory), and the last to write would drop the other's points or submission.
The lock is an exclusive ``flock`` on ``<sweep>/.sweep.lock``, held while a command writes the sweep and while
it submits (seconds); a local sweep runs its points without it (a point another command runs is left alone).
Where the file system has no ``flock`` (some parallel file systems), the command goes on without it.

    with sweep_lock(sweep_dir, name):
        sweep = load_sweep(sweep_dir)
        …
        save_sweep(sweep_dir, sweep)
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import Iterator

LOCK_FILE = ".sweep.lock"


@contextlib.contextmanager
def sweep_lock(sweep_dir: Path, name: str) -> Iterator[None]:
    """Hold the sweep's lock (waiting, with a line saying so, while another command holds it)."""
    import fcntl

    with open(Path(sweep_dir) / LOCK_FILE, "a+") as handle:
        locked = _lock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if locked is None:  # held by another command
            print(f"[lit-lora] sweep {name}: waiting for another lit-lora sweep command on {sweep_dir} "
                  f"({handle.name})", flush=True)
            locked = bool(_lock(handle, fcntl.LOCK_EX))
        try:
            yield
        finally:
            if locked:
                fcntl.flock(handle, fcntl.LOCK_UN)


def _lock(handle, operation: int):
    """``True`` when locked, ``None`` when another holds it (non-blocking), ``False`` when there is no ``flock``."""
    import fcntl

    try:
        fcntl.flock(handle, operation)
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        if err.errno in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise

