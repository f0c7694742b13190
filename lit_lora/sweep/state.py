"""The sweep directory and the state of its points: finished, running, pending, stopped, failed, interrupted, not
started.

    from lit_lora.sweep.state import load_sweep, point_states
    sweep = load_sweep("runs/demo")
    for point, state in point_states("runs/demo", sweep):
        print(point["name"], state.state, state.detail)

Layout (``runs/<sweep>/``): ``sweep.json`` (the points: name, overrides, config, run dir; SLURM submissions),
``points.txt`` (line N: the absolute path of point N's config, read by ``slurm/launch.sh`` in array task N),
and per point ``<point>/point.yaml`` (its resolved config) beside everything its run writes: ``log.txt``
(stdout and stderr), ``sweep_status.json`` (who runs it; its exit status), Lightning's ``config.yaml``,
``metrics.csv``, ``run_summary.json``, ``before_after.json``, ``adapter/``, ``checkpoints/``. Earlier
attempts of a point that did not finish are kept under ``<point>/attempts/N/``.

A point is **finished** when its run wrote ``run_summary.json`` and the adapter (or full model) directory it
names (``FinalExport``, at the end of fit, after the last step) and the run did not then exit with an error
(``sweep_status.json``, when present, holds exit status 0; SLURM does not report the task as failed).
Otherwise, in this order: **pending** / **running** while SLURM (``scontrol``, else ``sacct``) lists its
array task as such, or the local runner's process is alive; **stopped** when the run saved a preemption
checkpoint (``hpc_ckpt_N.ckpt``: ``scancel``, the time limit or a preemption without requeue) and did not exit
with an error, and its ``point.yaml`` has not changed since: the next run of the sweep resumes it from that
checkpoint; **failed** with a non-zero exit status, a failed SLURM state, or an exit without the final files;
**interrupted** when it started (a log or a runner's status) but no exit was recorded; **not started**
otherwise.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

from lit_lora.cluster.run_files import hpc_checkpoints
from lit_lora.errors import InputError
from lit_lora.strict_json import dumps

SWEEP_FILE = "sweep.json"
POINTS_FILE = "points.txt"
POINT_CONFIG = "point.yaml"
STATUS_FILE = "sweep_status.json"
LOG_FILE = "log.txt"
ATTEMPTS_DIR = "attempts"

FINISHED, RUNNING, PENDING, STOPPED, FAILED, INTERRUPTED, NOT_STARTED = (
    "finished", "running", "pending", "stopped", "failed", "interrupted", "not started")
SLURM_PENDING = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SUSPENDED",
                 "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}
SLURM_RUNNING = {"RUNNING", "COMPLETING"}
# the scheduler ended the task (not the run's own error): with a preemption checkpoint it resumes
SLURM_STOPPED = {"CANCELLED", "TIMEOUT", "PREEMPTED", "DEADLINE", "NODE_FAIL", "COMPLETED"}
SLURM_FAILED = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED",
                "REVOKED", "SPECIAL_EXIT"}


@dataclass
class PointState:
    state: str
    detail: str = ""
    log: Optional[Path] = None  # the point's log, when there is one
    checkpoint: Optional[Path] = None  # a stopped point's hpc_ckpt_N.ckpt, which the next run resumes from


# ---- sweep.json ------------------------------------------------------------------------------------
class SweepFileError(InputError, ValueError):
    """A ``sweep.json`` that cannot be read: the file and why, not a JSON parser's traceback."""


def load_sweep(sweep_dir: str | Path) -> dict:
    path = Path(sweep_dir) / SWEEP_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no sweep here (lit-lora sweep --config … --grid … writes it)")
    try:
        sweep = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise SweepFileError(f"{path} is not readable JSON ({err}): restore it, or give the sweep another "
                             "--name") from None
    if not isinstance(sweep, dict) or not isinstance(sweep.get("points"), list):
        raise SweepFileError(f"{path} is not a lit-lora sweep file (no list of points)")
    return sweep


def save_sweep(sweep_dir: str | Path, sweep: dict) -> None:
    """Write ``sweep.json`` whole or not at all: a temporary file of this process (one shared by two commands
    would mix their texts, or be gone when the second renames it), synced, then renamed over it."""
    path = Path(sweep_dir) / SWEEP_FILE
    tmp = path.with_name(f".{SWEEP_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w") as f:
        f.write(dumps(sweep, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---- the run's own files ---------------------------------------------------------------------------
def final_outputs(run_dir: Path) -> bool:
    """``run_summary.json`` and the non-empty weights directory it names (written together at the end of fit)."""
    summary = read_json(run_dir / "run_summary.json")
    if not summary:
        return False
    named = Path(summary.get("adapter_dir") or "adapter")
    for directory in (named, run_dir / named.name):
        if directory.is_dir() and any(directory.iterdir()):
            return True
    return False


def config_digest(path: Path) -> Optional[str]:
    """sha256 of a point's ``point.yaml``: recorded in ``sweep_status.json`` when a run starts (``run_point``,
    ``slurm/launch.sh``), so that a checkpoint is resumed only under the settings it was trained with."""
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def resume_checkpoint(run_dir: Path) -> Optional[Path]:
    """The newest ``hpc_ckpt_N.ckpt`` of the point, if the run that saved it ran the current ``point.yaml`` (the
    sweep rewrites it when the point's settings change, and a run with other settings must start again)."""
    saved = hpc_checkpoints(run_dir) if run_dir.is_dir() else []
    if not saved:
        return None
    recorded = read_json(run_dir / STATUS_FILE).get("config_sha256")
    config = run_dir / POINT_CONFIG
    if recorded is not None:
        return saved[-1] if recorded == config_digest(config) else None
    # a status from before digests were recorded: point.yaml must not be newer than the checkpoint
    return None if config.is_file() and config.stat().st_mtime > saved[-1].stat().st_mtime else saved[-1]


def killed(returncode: Optional[int]) -> bool:
    """An exit status that says a signal ended the run (the scheduler's SIGTERM / SIGKILL, Ctrl-C), not its error."""
    return returncode is not None and (returncode < 0 or returncode - 128 in (signal.SIGINT, signal.SIGKILL,
                                                                               signal.SIGTERM))


def earlier_attempt(run_dir: Path) -> list[Path]:
    """What a previous attempt left in ``run_dir`` (everything but the point's config and older attempts)."""
    if not run_dir.is_dir():
        return []
    return [p for p in run_dir.iterdir() if p.name not in (POINT_CONFIG, ATTEMPTS_DIR)]


def move_earlier_attempt(run_dir: Path) -> Optional[Path]:
    """Move an unfinished attempt's files to ``<point>/attempts/N/`` so the next one starts in a clean run dir."""
    leftovers = earlier_attempt(run_dir)
    if not leftovers:
        return None
    attempts = run_dir / ATTEMPTS_DIR
    number = 1 + max((int(p.name) for p in attempts.glob("*") if p.name.isdigit()), default=0)
    target = attempts / str(number)
    target.mkdir(parents=True)
    for path in leftovers:
        shutil.move(str(path), str(target / path.name))
    return target


def log_tail(path: Optional[Path], lines: int = 20) -> str:
    if path is None or not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(0, f.tell() - 64 * 1024))
        text = f.read().decode("utf-8", errors="replace")
    text = text.replace("\r", "\n")  # progress bars
    kept = [line.rstrip() for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


ERROR_LINE = re.compile(r"^(lit-lora( \w+)?: |[A-Za-z_][\w.]*(Error|Exception): )")


def failure_lines(path: Optional[Path], lines: int = 8) -> str:
    """The error a failed run ended with (from its last ``SomeError: …`` or ``lit-lora: …`` line on, at most
    ``lines`` lines), else the log's last ``lines`` lines."""
    tail = log_tail(path, 60).splitlines()
    start = next((i for i in range(len(tail) - 1, -1, -1) if ERROR_LINE.match(tail[i])), None)
    return "\n".join(tail[start:start + lines] if start is not None else tail[-lines:])


# ---- SLURM -------------------------------------------------------------------------------------------
def _expand_task_ids(spec: str) -> list[int]:
    """``"3"`` / ``"2-5%2"`` / ``"1,4-6"`` -> task ids."""
    ids: list[int] = []
    for part in spec.split("%")[0].strip("[]").split(","):
        if "-" in part:
            lo, hi = part.split("-", 1)
            ids.extend(range(int(lo), int(hi) + 1))
        elif part.isdigit():
            ids.append(int(part))
    return ids


def _run(cmd: list[str]) -> Optional[str]:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def slurm_array_states(job_id: str) -> dict[int, str]:
    """Array task id -> SLURM state of array job ``job_id`` (``scontrol``, else ``sacct``; empty when neither knows)."""
    states: dict[int, str] = {}
    out = _run(["scontrol", "-o", "show", "job", str(job_id)])
    if out:
        for line in out.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if fields.get("ArrayJobId") != str(job_id) or "ArrayTaskId" not in fields:
                continue
            for task in _expand_task_ids(fields["ArrayTaskId"]):
                states[task] = fields.get("JobState", "UNKNOWN")
        if states:
            return states
    out = _run(["sacct", "-n", "-P", "-X", "-j", str(job_id), "-o", "JobID,State"])
    for line in (out or "").splitlines():
        job, _, state = line.partition("|")
        if "_" in job:
            for task in _expand_task_ids(job.split("_", 1)[1]):
                states[task] = state.split()[0] if state else "UNKNOWN"
    return states


def slurm_tasks(sweep: dict) -> dict[int, tuple[str, Optional[str], Optional[str]]]:
    """Point index -> (``<array job>_<task>`` of its latest submission, its SLURM state or ``None``, when it was
    submitted)."""
    latest: dict[int, tuple[str, Optional[str]]] = {}
    for submission in sweep.get("slurm", []):
        for index in submission["indices"]:
            latest[index] = (str(submission["job_id"]), submission.get("submitted"))
    states = {job: slurm_array_states(job) for job, _ in set(latest.values())}
    return {i: (f"{job}_{i}", states[job].get(i), submitted) for i, (job, submitted) in latest.items()}


def ran_locally_since(status: dict, submitted: Optional[str]) -> bool:
    """The point's latest run is a local one started after its SLURM submission: that task's state is history."""
    if status.get("runner") != "local" or not status.get("started") or not submitted:
        return False
    try:
        return datetime.datetime.fromisoformat(status["started"]) > datetime.datetime.fromisoformat(submitted)
    except (TypeError, ValueError):
        return False


# ---- a point's state ---------------------------------------------------------------------------------
def _alive(status: dict) -> bool:
    pid = status.get("pid")
    if not pid or status.get("host") != socket.gethostname():
        return False
    try:
        import psutil

        process = psutil.Process(int(pid))
        return abs(process.create_time() - float(status.get("pid_started_ts", 0))) < 1 and process.is_running()
    except Exception:
        return False


def point_log(sweep_dir: Path, point: dict, task: Optional[tuple]) -> Optional[Path]:
    log = sweep_dir / point["run_dir"] / LOG_FILE
    if log.is_file() or task is None:
        return log if log.is_file() else None
    slurm_out = sweep_dir / f"slurm-{task[0]}.out"  # written before launch.sh found the point's directory
    return slurm_out if slurm_out.is_file() else None


def point_state(sweep_dir: str | Path, point: dict, task: Optional[tuple] = None) -> PointState:
    """The state of one point (see the module doc); ``task``: its SLURM array task and state (``slurm_tasks``)."""
    sweep_dir = Path(sweep_dir)
    run_dir = sweep_dir / point["run_dir"]
    status = read_json(run_dir / STATUS_FILE)
    log = point_log(sweep_dir, point, task)
    task_id, slurm_state, submitted = (*task, None)[:3] if task else (None, None, None)
    if ran_locally_since(status, submitted):
        task_id = slurm_state = None
    returncode = status.get("returncode")
    if slurm_state in SLURM_PENDING:
        return PointState(PENDING, f"SLURM {task_id} {slurm_state}", log)
    if slurm_state in SLURM_RUNNING:
        return PointState(RUNNING, f"SLURM {task_id} {slurm_state}", log)
    if returncode is None and _alive(status):
        return PointState(RUNNING, f"pid {status['pid']} on {status['host']}", log)
    if final_outputs(run_dir) and returncode in (None, 0) and slurm_state not in SLURM_FAILED:
        return PointState(FINISHED, "", log)
    where = f"SLURM {task_id}: " if task_id and status.get("runner") == "slurm" else ""
    saved = resume_checkpoint(run_dir) if returncode in (None, 0) or killed(returncode) else None
    if saved is not None and (slurm_state is None or slurm_state in SLURM_STOPPED):
        if slurm_state:
            ended = f"SLURM {task_id} {slurm_state}"
        else:
            ended = "no exit status" if returncode is None else f"exit status {returncode}"
        return PointState(STOPPED, f"{ended}; saved {saved.name}, which the next run of the sweep resumes from", log,
                          saved)
    if returncode not in (None, 0):
        return PointState(FAILED, f"{where}exit status {returncode}", log)
    if slurm_state == "CANCELLED" and log is None and not status:  # scancel of a task still pending
        return PointState(NOT_STARTED, f"SLURM {task_id} cancelled before it started", log)
    if slurm_state in SLURM_FAILED:
        return PointState(FAILED, f"SLURM {task_id} {slurm_state}", log)
    if returncode == 0 or slurm_state == "COMPLETED":
        return PointState(FAILED, f"{where}exited without run_summary.json and the final adapter", log)
    if status.get("pid"):
        return PointState(INTERRUPTED, f"runner pid {status['pid']} on {status.get('host')} stopped "
                                       "without an exit status", log)
    if log is not None:
        return PointState(INTERRUPTED, "started (log written) but no exit status recorded"
                                       + (f"; SLURM no longer knows {task_id}" if task_id else ""), log)
    if task_id:
        return PointState(NOT_STARTED, f"submitted as SLURM {task_id}, which SLURM no longer lists", log)
    return PointState(NOT_STARTED, "", log)


def point_states(sweep_dir: str | Path, sweep: dict) -> Iterator[tuple[dict, PointState]]:
    tasks = slurm_tasks(sweep)
    for point in sweep["points"]:
        yield point, point_state(sweep_dir, point, tasks.get(point["index"]))
