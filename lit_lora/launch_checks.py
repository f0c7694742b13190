"""Moved to ``lit_lora.cluster.launch_checks``; kept so existing configs keep working.

That module holds the SLURM allocation and run-directory checks. Class paths such as ``lit_lora.launch_checks.X``
in YAML (and imports from here) resolve to the same objects as ``lit_lora.cluster.launch_checks.X``; new code
imports from ``lit_lora.cluster.launch_checks``.
"""

from lit_lora.cluster.launch_checks import (
    INSIDE_INPUT,
    RUN_OUTPUTS,
    AllocationMismatch,
    MissingResumeCheckpoint,
    RunDirectoryCheck,
    RunDirectoryConflict,
    check_allocation,
    check_fresh_run_dir,
    check_requeued_resume,
    check_run_location,
    device_count,
    earlier_run_outputs,
    hpc_checkpoints,
    local_directory,
)

__all__ = [
    "AllocationMismatch",
    "INSIDE_INPUT",
    "MissingResumeCheckpoint",
    "RUN_OUTPUTS",
    "RunDirectoryCheck",
    "RunDirectoryConflict",
    "check_allocation",
    "check_fresh_run_dir",
    "check_requeued_resume",
    "check_run_location",
    "device_count",
    "earlier_run_outputs",
    "hpc_checkpoints",
    "local_directory",
]
