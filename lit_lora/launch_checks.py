"""Checks at launch that turn SLURM mismatches into clear errors instead of hangs or silent restarts.

    >>> check_allocation(num_nodes=2, devices=1, env={"SLURM_JOB_ID": "7", "SLURM_NNODES": "2",
    ...                                                "SLURM_NTASKS_PER_NODE": "1", "SLURM_NTASKS": "2"})
    >>> check_allocation(num_nodes=1, devices=2, env={"SLURM_JOB_ID": "7", "SLURM_NNODES": "2",
    ...                                                "SLURM_NTASKS_PER_NODE": "1", "SLURM_NTASKS": "2"})
    Traceback (most recent call last):
    ...
    lit_lora.launch_checks.AllocationMismatch: SLURM allocated 2 node(s) × 1 task(s) per node ...

A DDP job whose Trainer expects more processes than SLURM started waits forever in
``init_process_group``; one that expects fewer trains on a wrong world size. Both are caught here,
before any model is loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping, Optional, Union


class AllocationMismatch(RuntimeError):
    """The SLURM allocation and the Trainer's ``num_nodes`` / ``devices`` disagree."""


class MissingResumeCheckpoint(RuntimeError):
    """A requeued SLURM job found no checkpoint to resume from."""


def _tasks_per_node(env: Mapping[str, str]) -> Optional[int]:
    """``SLURM_NTASKS_PER_NODE`` (set with --ntasks-per-node), else from ``SLURM_TASKS_PER_NODE`` (``2(x2)``)."""
    if env.get("SLURM_NTASKS_PER_NODE"):
        return int(env["SLURM_NTASKS_PER_NODE"])
    spec = env.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts = {int(m.group(1)) for m in re.finditer(r"(\d+)(?:\(x\d+\))?", spec)}
    return counts.pop() if len(counts) == 1 else None


def device_count(devices: Union[int, str, list, None], accelerator: Optional[str] = None) -> Optional[int]:
    """Number of processes per node a Trainer ``devices`` value asks for (``None`` when it cannot be known)."""
    if isinstance(devices, (list, tuple)):
        return len(devices)
    if isinstance(devices, str):
        devices = devices.strip()
        if "," in devices:
            return len([d for d in devices.split(",") if d.strip()])
        if devices in ("auto", "-1"):
            return None
        devices = int(devices)
    if isinstance(devices, int) and devices >= 0:
        return devices
    return None


def check_allocation(num_nodes: int, devices, env: Optional[Mapping[str, str]] = None,
                     accelerator: Optional[str] = None) -> None:
    """Raise ``AllocationMismatch`` when running under SLURM and the allocation differs from the Trainer's."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID") or env.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return
    if not env.get("SLURM_STEP_ID") and not env.get("SLURM_NTASKS"):
        return
    nnodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    per_node = _tasks_per_node(env)
    wanted = device_count(devices, accelerator)
    problems = []
    if nnodes != num_nodes:
        problems.append(f"trainer.num_nodes={num_nodes} but SLURM_NNODES={nnodes}")
    if per_node is not None and wanted is not None and per_node != wanted:
        problems.append(f"trainer.devices={devices} but {per_node} task(s) per node")
    if problems:
        raise AllocationMismatch(
            f"SLURM allocated {nnodes} node(s) × {per_node} task(s) per node, the Trainer expects "
            f"{num_nodes} node(s) × {devices} device(s): {'; '.join(problems)}. Make them equal: "
            f"#SBATCH --nodes ↔ trainer.num_nodes and #SBATCH --ntasks-per-node ↔ trainer.devices "
            f"(e.g. pass --trainer.num_nodes {nnodes} --trainer.devices {per_node}, or change the #SBATCH lines)."
        )


def hpc_checkpoints(root: Union[str, Path]) -> list[Path]:
    """``hpc_ckpt_N.ckpt`` files in ``root`` (what Lightning's SLURM auto-resume looks for), oldest first."""
    found = [p for p in Path(root).glob("hpc_ckpt_*.ckpt") if re.fullmatch(r"hpc_ckpt_\d+\.ckpt", p.name)]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name)))


def check_requeued_resume(ckpt_path, default_root_dir, env: Optional[Mapping[str, str]] = None) -> None:
    """A requeued job (``SLURM_RESTART_COUNT`` > 0) must resume from a checkpoint, never restart from step 0."""
    env = os.environ if env is None else env
    restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    if restarts == 0 or ckpt_path is not None or hpc_checkpoints(default_root_dir):
        return
    raise MissingResumeCheckpoint(
        f"SLURM job {env.get('SLURM_JOB_ID')} was requeued (SLURM_RESTART_COUNT={restarts}) but "
        f"{Path(default_root_dir).resolve()} holds no hpc_ckpt_N.ckpt, so it would silently start again from "
        "step 0. Keep trainer.default_root_dir the same across requeues (the sbatch scripts use runs/<exp>/"
        "<SLURM_JOB_ID>), check the first run's log for the preemption save, or pass --ckpt_path explicitly."
    )
