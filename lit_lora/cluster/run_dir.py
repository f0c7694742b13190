"""Where a run's files go: the first logger's directory (``lightning_logs/version_N`` or a pinned one), else
``trainer.default_root_dir``.

    from lit_lora.cluster.run_dir import run_dir
    run_dir(trainer) / "adapter"      # the same path on every rank

``trainer.log_dir`` is broadcast from rank 0, so every rank must ask (it is a collective under DDP).

A pinned directory (a W&B run's, a sweep point's or a SLURM job's: loggers with no ``version_N`` level) is the
same for a ``test`` of that run read from its ``config.yaml``; ``evaluation_dirs`` gives such a test a
directory of its own inside the run (``<run>/test_0``), so it never overwrites the training run's files.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.rank_zero import rank_zero_only

from lit_lora.cluster.run_files import holds_run

log = logging.getLogger("lit_lora")


def run_dir(trainer: Any) -> Path:
    """The run directory; call it on every rank."""
    return Path(trainer.log_dir or trainer.default_root_dir)


def pinned(entry: Any) -> bool:
    """A logger config writing straight into its ``save_dir`` (no ``version_N`` level): W&B, or a CSV logger
    with ``name: ""`` and ``version: ""``."""
    class_path = getattr(entry, "class_path", None) if entry is not None else None
    if not class_path:
        return False
    if class_path.endswith("WandbRun"):
        return True
    args = entry.init_args
    return class_path.endswith("CSVLogger") and args.get("name") == "" and args.get("version") == ""


def evaluation_dirs(trainer_config: Any, subcommand: str) -> None:
    """For ``test`` / ``validate``: move every pinned logger whose directory holds a training run
    (``run_files.holds_run``) to ``<run>/<subcommand>_<N>`` (the first free N), together."""
    if subcommand == "fit":
        return
    loggers = trainer_config.get("logger")
    entries = [e for e in (loggers if isinstance(loggers, list) else [loggers]) if pinned(e)]

    def directory(entry: Any) -> str:
        return str(entry.init_args.get("save_dir") or trainer_config.get("default_root_dir") or ".")

    for run in {directory(e) for e in entries}:
        root = Path(run)
        if not holds_run(root):
            continue
        n = 0
        while (root / f"{subcommand}_{n}").exists():
            n += 1
        target = root / f"{subcommand}_{n}"
        for entry in entries:
            if directory(entry) == run:
                entry.init_args["save_dir"] = str(target)
        if rank_zero_only.rank == 0:
            log.info("[lit-lora] %s: writing into %s (%s holds the training run)", subcommand, target, root)
