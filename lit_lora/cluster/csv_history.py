"""A CSV logger whose ``metrics.csv`` survives a SLURM requeue: the resumed job continues the history.

Lightning's ``CSVLogger`` deletes an existing ``metrics.csv`` when it starts, so a requeued job (same
run directory, see ``pin_log_dir``) would keep only the steps after its checkpoint, and
``lit-lora compare`` would plot half a loss curve. ``ResumableCSVLogger`` keeps the file; when training
starts, the ``CSVHistoryResume`` callback (always present in ``lit-lora fit``; the logger is meant to be
used with it) calls ``keep_history_before(trainer.global_step)``, which drops the rows the resumed run
will log again (all of them for a fresh start, as Lightning does)::

    logger = ResumableCSVLogger(save_dir="runs/demo/1234", name="", version="")
    logger.keep_history_before(500)   # the rows of the first 500 optimizer steps stay
    trainer = Trainer(logger=logger, callbacks=[CSVHistoryResume()])   # the same, when fit starts
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lit_lora.cluster.early_signals import under_slurm
from lit_lora.cluster.lightning_compat import filesystem_of, set_experiment, started_experiment
from lit_lora.cluster.run_files import holds_run

log = logging.getLogger("lit_lora")
CSV_LOGGER = "lit_lora.cluster.csv_history.ResumableCSVLogger"  # its class path in configs


class _KeepingExperimentWriter(ExperimentWriter):
    """Lightning's writer, minus deleting ``metrics.csv`` at start; the existing header seeds its columns."""

    def _check_log_dir_exists(self) -> None:  # overrides a private method: listed in lightning_compat.PRIVATE_API
        fs = filesystem_of(self)
        if fs.isfile(self.metrics_file_path):
            with fs.open(self.metrics_file_path, "r", newline="") as f:
                self.metrics_keys = list(csv.DictReader(f).fieldnames or [])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` that continues an existing ``metrics.csv`` instead of deleting it (same arguments)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if started_experiment(self) is None:
            filesystem_of(self).makedirs(self.root_dir, exist_ok=True)
            set_experiment(self, _KeepingExperimentWriter(log_dir=self.log_dir))
        return started_experiment(self)

    @rank_zero_only
    def keep_history_before(self, step: int) -> int:
        """Drop rows logged at ``step`` or later (after the checkpoint); returns the number of rows kept."""
        path = os.path.join(self.log_dir, ExperimentWriter.NAME_METRICS_FILE)
        if not os.path.isfile(path):
            return 0
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            fieldnames, rows = reader.fieldnames or [], list(reader)
        kept = [r for r in rows if _before(r, step)]
        if len(kept) == len(rows):
            return len(kept)
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(kept)
        if step > 0:
            log.info("[lit-lora] %s: continuing the %d rows logged before step %d (%d later rows dropped)",
                     path, len(kept), step, len(rows) - len(kept))
        return len(kept)


def _before(row: dict, step: int) -> bool:
    """Whether a ``metrics.csv`` row belongs to the history before a resume at ``step``."""
    # Lightning logs step k's training row and the validation after it under k - 1, so a checkpoint
    # after ``step`` optimizer steps covers exactly the rows logged under 0 … step - 1
    return int(float(row.get("step") or 0)) < step


class CSVHistoryResume(Callback):
    """When training starts, continue every ``ResumableCSVLogger``'s ``metrics.csv`` from the step training
    resumes at (nothing kept on a fresh start)."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, ResumableCSVLogger):
                logger.keep_history_before(trainer.global_step)


def default_csv_logger(trainer_config: Any, ckpt_path: Optional[str] = None) -> Optional[Any]:
    """Lightning's ``CSVLogger`` for a config whose logger is the default (``logger: true`` / unset), else None;
    for a fit resumed from a checkpoint of a run under ``default_root_dir`` (the same command with ``--ckpt_path``),
    a ``ResumableCSVLogger`` continuing that run's directory. A checkpoint from elsewhere starts a new
    ``version_N`` under ``default_root_dir``.

    Lightning's own default is TensorBoard where ``tensorboard`` is installed (most GPU images) and CSV elsewhere,
    so one config would write ``metrics.csv``, which fit's summary, ``lit-lora compare`` and the tests read, on a
    laptop and not on the cluster. Same directory layout as Lightning's CSV default
    (``<default_root_dir>/lightning_logs/version_N``). It is handed to the Trainer, not written into the config:
    the run's ``config.yaml`` keeps the default, so ``lit-lora test --config <run>/config.yaml
    --trainer.default_root_dir DIR`` writes under ``DIR``. A configured logger is left alone, and under SLURM
    ``pin_log_dir`` has already chosen the requeue-safe one.
    """
    if trainer_config.get("logger") not in (None, True):
        return None
    root = Path(trainer_config.get("default_root_dir") or os.getcwd())
    resumed = continued_run(ckpt_path, root) if ckpt_path else None
    if resumed is not None:  # one directory, one metrics.csv, one summary for the whole run
        log.info("[lit-lora] resuming in %s (the checkpoint's run directory)", resumed)
        return ResumableCSVLogger(save_dir=str(resumed), name="", version="")
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=str(root))


def continued_run(ckpt_path: str, root: Path) -> Optional[Path]:
    """The run directory a ``fit --ckpt_path`` continues in place, or ``None`` for a new ``version_N``.

    In place: a checkpoint in ``<run>/checkpoints/`` of a run under ``default_root_dir`` that is the run's latest
    (no checkpoint of a later step beside it) and that the run has not gone past (no ``run_summary.json`` of a
    later step): an interrupted run, or a finished one extended from its last checkpoint. Resuming from an
    earlier checkpoint, or a second time from the same one, starts a new run, so no result is overwritten.
    """
    path = Path(ckpt_path)
    if not path.exists() or path.parent.name != "checkpoints":  # a file, or a DeepSpeed / FSDP directory
        return None
    run = path.parent.parent
    if not holds_run(run):
        return None
    if not run.resolve().is_relative_to(root.resolve()):
        return None
    step = checkpoint_step(path)
    later = [checkpoint_step(p) for p in path.parent.iterdir() if p.suffix == ".ckpt" and p != path]
    if step is None or any(other is not None and other > step for other in later):
        return None
    summary = run / "run_summary.json"
    if summary.is_file():
        finished_at = json.loads(summary.read_text()).get("global_step")
        if finished_at is None or finished_at > step:
            return None
    return run


def checkpoint_step(path: Path) -> Optional[int]:
    """The optimizer step a checkpoint was written at: ``step=N`` in its name, else its ``global_step``."""
    named = re.search(r"step=(\d+)", path.name)
    if named:
        return int(named.group(1))
    if not path.is_file():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["global_step"])
    except Exception:  # noqa: BLE001 - not a Lightning checkpoint: Lightning says so when it loads it
        return None


def pin_log_dir(trainer_config: Any, env: Optional[dict] = None) -> None:
    """Under SLURM, log straight into ``default_root_dir`` instead of a new ``version_N`` per (re)start.

    Lightning's default logger numbers its directory, so a requeued job would write its config,
    checkpoints and adapter to ``version_1`` while its checkpoint sits beside ``version_0``. With the
    sbatch scripts' ``default_root_dir=runs/<exp>/<SLURM_JOB_ID>`` every restart shares one run directory.
    Only the default logger (``logger: true`` / unset) is replaced, by a ``ResumableCSVLogger`` that
    continues ``metrics.csv`` across restarts; a configured logger is left alone.
    """
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID") or not under_slurm(env) or trainer_config.get("logger") not in (None, True):
        return
    from jsonargparse import Namespace

    root = trainer_config.get("default_root_dir") or os.getcwd()
    trainer_config["logger"] = Namespace(class_path=CSV_LOGGER,
                                         init_args=Namespace(save_dir=str(root), name="", version="",
                                                             flush_logs_every_n_steps=1))
