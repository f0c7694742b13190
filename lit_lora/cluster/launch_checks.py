"""Checks at launch that turn SLURM mismatches into clear errors instead of hangs or silent restarts.

    >>> check_allocation(num_nodes=2, devices=1, env={"SLURM_JOB_ID": "7", "SLURM_NNODES": "2",
    ...                                                "SLURM_NTASKS_PER_NODE": "1", "SLURM_NTASKS": "2"})
    >>> check_allocation(num_nodes=1, devices=2, env={"SLURM_JOB_ID": "7", "SLURM_NNODES": "2",
    ...                                                "SLURM_NTASKS_PER_NODE": "1", "SLURM_NTASKS": "2"})
    Traceback (most recent call last):
    ...
    lit_lora.cluster.launch_checks.AllocationMismatch: SLURM allocated 2 node(s) × 1 task(s) per node, ...

A DDP job whose Trainer expects more processes than SLURM started waits forever in
``init_process_group``; one that expects fewer trains on a wrong world size. Both are caught here,
before any model is loaded.

At the start of ``fit`` (the ``RunDirectoryCheck`` callback, always installed by ``lit-lora fit``) the run
directory is checked too: a requeued job must resume (``check_requeued_resume``), a run directory must not
lie inside the data or the model directory (``check_run_location``), and a fresh run must not overwrite an
earlier one (``check_fresh_run_dir``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Iterable, Mapping, Optional, Union

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger

from lit_lora.cluster.early_signals import under_slurm
from lit_lora.cluster.lightning_compat import fit_ckpt_path
from lit_lora.cluster.run_dir import run_dir
from lit_lora.cluster.run_files import RUN_OUTPUTS, discard_setup_only, earlier_run_outputs, \
    hpc_checkpoints  # noqa: F401 (RUN_OUTPUTS re-exported)
from lit_lora.errors import InputError

log = logging.getLogger("lit_lora")


class AllocationMismatch(InputError, RuntimeError):
    """The SLURM allocation and the Trainer's ``num_nodes`` / ``devices`` disagree."""


class MissingResumeCheckpoint(InputError, RuntimeError):
    """A requeued SLURM job found no checkpoint to resume from."""


class RunDirectoryConflict(InputError, RuntimeError):
    """The run directory would mix with the data, the model, or an earlier run's results."""


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


# what a launcher of every node sets (torchrun, Lightning's own NODE_RANK / MASTER_ADDR, LSF, MPI); SLURM aside
LAUNCHER_VARIABLES = ("NODE_RANK", "GROUP_RANK", "MASTER_ADDR", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "LSB_JOBID",
                      "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def check_allocation(num_nodes: int, devices, env: Optional[Mapping[str, str]] = None,
                     accelerator: Optional[str] = None) -> None:
    """Raise ``AllocationMismatch`` when running under SLURM and the allocation differs from the Trainer's, or
    outside any launcher with ``num_nodes`` > 1 (a multi-node run's ``config.yaml`` given to ``lit-lora test`` on
    a login node): the process would wait for the other nodes forever."""
    env = os.environ if env is None else env
    if not under_slurm(env):
        if num_nodes and num_nodes > 1 and not any(name in env for name in LAUNCHER_VARIABLES):
            raise AllocationMismatch(
                f"trainer.num_nodes={num_nodes}, but no launcher started the other nodes (no SLURM job, torchrun or "
                "NODE_RANK / MASTER_ADDR): this process would wait for them forever. On one machine pass "
                "--trainer.num_nodes 1; on a cluster launch it there (sbatch slurm/…)")
        return
    nnodes = int(env.get("SLURM_NNODES") or env.get("SLURM_JOB_NUM_NODES") or 1)
    per_node = _tasks_per_node(env)
    wanted = device_count(devices, accelerator)
    problems = []
    if nnodes != num_nodes:
        problems.append(f"trainer.num_nodes={num_nodes} but SLURM_NNODES={nnodes}")
    if per_node is not None and wanted is not None and per_node != wanted:
        problems.append(f"trainer.devices={devices} but {per_node} task(s) per node")
    tasks = int(env["SLURM_NTASKS"]) if env.get("SLURM_NTASKS", "").isdigit() else None
    if not problems and tasks is not None and wanted is not None and tasks != num_nodes * wanted:
        # --ntasks below nodes × --ntasks-per-node: fewer processes than the Trainer waits for
        problems.append(f"trainer.num_nodes × trainer.devices = {num_nodes * wanted} processes but "
                        f"SLURM_NTASKS={tasks}")
    if problems and "SLURM_NTASKS=" in problems[0]:
        raise AllocationMismatch(
            f"SLURM started {tasks} task(s) in all, the Trainer expects {num_nodes} node(s) × {devices} device(s): "
            f"{problems[0]}. Give sbatch --nodes and --ntasks-per-node only (drop --ntasks, or set it to their "
            "product)."
        )
    if problems:
        example = f"pass --trainer.num_nodes {nnodes} --trainer.devices {per_node}, or " if per_node else ""
        raise AllocationMismatch(
            f"SLURM allocated {nnodes} node(s) × {per_node or 'uneven'} task(s) per node, the Trainer expects "
            f"{num_nodes} node(s) × {devices} device(s): {'; '.join(problems)}. Make them equal: "
            f"#SBATCH --nodes ↔ trainer.num_nodes and #SBATCH --ntasks-per-node ↔ trainer.devices "
            f"(e.g. {example}change the #SBATCH lines)."
        )


def check_requeued_resume(ckpt_path, default_root_dir, env: Optional[Mapping[str, str]] = None,
                          start_fresh: bool = False) -> bool:
    """A requeued job (``SLURM_RESTART_COUNT`` > 0) must resume from a checkpoint, never restart from step 0.

    ``start_fresh`` (``preemption.start_fresh_if_no_checkpoint``) turns the error into a warning, for a node
    that failed before the first save. Returns whether this job starts again from step 0 on purpose.
    """
    env = os.environ if env is None else env
    restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    if restarts == 0 or ckpt_path is not None or hpc_checkpoints(default_root_dir):
        return False
    where = (f"SLURM job {env.get('SLURM_JOB_ID')} was requeued (SLURM_RESTART_COUNT={restarts}) but "
             f"{Path(default_root_dir).resolve()} holds no hpc_ckpt_N.ckpt")
    if start_fresh:
        log.warning("[lit-lora] %s: starting again from step 0 (preemption.start_fresh_if_no_checkpoint: true); "
                    "the earlier start's config.yaml, metrics.csv and outputs there are replaced", where)
        return True
    raise MissingResumeCheckpoint(
        f"{where}, so it would silently start again from step 0. Keep trainer.default_root_dir the same across "
        "requeues (the sbatch scripts use runs/<exp>/<SLURM_JOB_ID>), check the first run's log for the preemption "
        "save, or pass --ckpt_path explicitly; to start again from step 0 on purpose (e.g. the node failed before "
        "the first save), set preemption.start_fresh_if_no_checkpoint: true."
    )


# ---- the run directory -------------------------------------------------------------------------------
# why a run directory must not lie inside an input directory, by kind of input
INSIDE_INPUT = {
    "data": "lit-lora reads every data file in that directory, so the next run would read this run's "
            "metrics.csv, config.yaml and summaries as data",
    "model": "the adapter, checkpoints and config.yaml written there would mix with the base model's files",
}


def local_directory(name_or_path: Optional[str]) -> Optional[Path]:
    """The existing local directory a data source or model path names (``None`` for a hub id, a file, nothing)."""
    if not name_or_path:
        return None
    from lit_lora.model_source import local_candidates

    found = next((c for c in local_candidates(str(name_or_path)) if c.is_dir()), None)
    return found.resolve() if found is not None else None


def check_run_location(run_dirs: Mapping[str, Union[str, Path]],
                       inputs: Iterable[tuple[str, str, Optional[str]]]) -> None:
    """Refuse a run directory equal to or inside a local input directory.

    ``run_dirs``: setting -> directory (``trainer.default_root_dir``, the logger's directory);
    ``inputs``: ``(kind, setting, value)`` with kind ``data`` or ``model``, e.g.
    ``("data", "data.source", "corpus/")``. Hub ids and single files are never directories and pass.
    """
    for kind, setting, value in inputs:
        directory = local_directory(value)
        if directory is None:
            continue
        for run_setting, run_dir in run_dirs.items():
            run = Path(run_dir).expanduser().resolve()
            if run.is_relative_to(directory):
                raise RunDirectoryConflict(
                    f"the run directory {run} ({run_setting}) is inside the {kind} directory {directory} ({setting}): "
                    f"{INSIDE_INPUT[kind]}. Put the run outside it, e.g. --trainer.default_root_dir runs/<experiment>."
                )


def check_fresh_run_dir(run_dir: Union[str, Path], resuming: bool) -> None:
    """A run that starts from step 0 must not write into a run directory an earlier run left its results in.

    Such a directory is pinned (SLURM: ``csv_history.pin_log_dir``, or a logger without versions such as
    ``WandbRun``), so the new run would replace the earlier one's ``config.yaml`` and adapter and truncate its
    ``metrics.csv``. Resuming (``--ckpt_path``, or SLURM's auto-resume from ``hpc_ckpt_N.ckpt``) continues it.
    """
    found = [] if resuming else earlier_run_outputs(run_dir)
    if found:
        raise RunDirectoryConflict(
            f"the run directory {Path(run_dir).resolve()} already holds an earlier run ({', '.join(found)}) and this "
            "fit starts from step 0 (no --ckpt_path, no hpc_ckpt_N.ckpt to auto-resume), so it would overwrite that "
            "run's config.yaml and adapter and truncate its metrics.csv. To continue that run, pass --ckpt_path "
            "<one of its checkpoints>; to start a new one, use another directory (--trainer.default_root_dir, or "
            "--trainer.logger.init_args.save_dir where the config names the logger's directory, as a sweep's "
            "point.yaml does; a new sbatch job: slurm/launch.sh names the directory by job id) or move the "
            "earlier run away."
        )


class RunDirectoryCheck(Callback):
    """In ``setup`` of ``fit``: refuse a run directory that would mix with the data, the model or an earlier run,
    and a requeued job without a checkpoint (rank 0 decides, every rank stops).

    Args:
        start_fresh_if_no_checkpoint: A requeued job that finds no ``hpc_ckpt_N.ckpt`` starts again from step 0
            with a warning (``preemption.start_fresh_if_no_checkpoint`` in YAML).
    """

    def __init__(self, start_fresh_if_no_checkpoint: bool = False):
        self.start_fresh_if_no_checkpoint = start_fresh_if_no_checkpoint

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check(trainer, pl_module)
        for logger in trainer.loggers:  # a held W&B run (``WandbRun.hold``) starts only now, past the check
            if callable(getattr(logger, "release", None)):
                logger.release()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        """A fit that stopped before its first step, or a ``validate`` / ``test`` that stopped (bad data, a refused
        setting, Ctrl-C), leaves no empty run directory that would take the next number or hold a lone config.yaml
        (what it did write, metrics included, stays)."""
        logger = trainer.logger
        stopped_early = trainer.global_step == 0 if trainer.state.fn == "fit" else True
        if stopped_early and trainer.is_global_zero and logger is not None \
                and getattr(logger, "_version", 0) is not None \
                and not logged_rows_pending(trainer):  # a numbered logger that picked no number made none
            log_dir = getattr(logger, "log_dir", None)  # the logger's own: no collective, rank 0 alone runs this
            if log_dir and discard_setup_only(log_dir):
                log.info("[lit-lora] %s: removed, the run stopped before its first step", log_dir)

    def check(self, trainer: Trainer, pl_module: LightningModule) -> None:
        ckpt_path = fit_ckpt_path(trainer)
        fresh_restart = check_requeued_resume(ckpt_path, trainer.default_root_dir,
                                              start_fresh=self.start_fresh_if_no_checkpoint)
        directory = str(run_dir(trainer))  # a broadcast: called on every rank
        datamodule = trainer.datamodule
        inputs = [("data", "data.source", getattr(datamodule, "source", None)),
                  ("data", "data.validation_source", getattr(datamodule, "validation_source", None)),
                  ("model", "model.model_name_or_path", getattr(pl_module, "model_name_or_path", None))]
        problem = None
        if trainer.is_global_zero:
            try:
                check_run_location({"trainer.default_root_dir": trainer.default_root_dir, "trainer.log_dir": directory},
                                   inputs)
                check_fresh_run_dir(directory, resuming=ckpt_path is not None or fresh_restart)
            except RunDirectoryConflict as err:
                problem = str(err)
        problem = trainer.strategy.broadcast(problem)  # every rank stops, not rank 0 alone
        if problem:
            raise RunDirectoryConflict(problem)


def logged_rows_pending(trainer: Trainer) -> bool:
    """A CSV logger holds rows it writes when Lightning finalizes it after the exception (the learning rate of
    step 1, say): the run logged something, and its directory must still be there then."""
    return any(isinstance(logger, CSVLogger) and logger.experiment.metrics for logger in trainer.loggers)
