"""Every private Lightning API lit-lora touches, in one place, checked against the versions it was tried with.

lit-lora's cluster runtime needs a few things Lightning has no public API for (the ``ckpt_path`` a ``fit``
will restore, Lightning's SLURM checkpoint name, the signal handlers Lightning restores at teardown …).
Each is one small function here, named for what it does, with the internals it touches in its docstring;
the rest of lit-lora calls these functions and never reaches into ``trainer._…`` itself. Subclasses that
override or read a private member of their Lightning base class (``AdapterCheckpoint``,
``ResumableCSVLogger``, ``WandbRun``) list it in ``PRIVATE_API`` and use the accessors below.

``CHECKED_LIGHTNING`` is the range of Lightning versions these were read against. Importing this module
under another version warns once (``UncheckedLightningVersion``, naming this file): the run goes on,
and ``tests/test_lightning_compat.py`` says by name which private member an upgrade removed::

    >>> from lit_lora.cluster import lightning_compat
    >>> lightning_compat.is_checked_version("2.6.6"), lightning_compat.is_checked_version("3.0.0")
    (True, False)
    >>> sorted({owner.rsplit(".", 1)[-1] for owner, _, _ in lightning_compat.PRIVATE_API})[:3]
    ['CSVLogger', 'ExperimentWriter', 'LightningCLI']

After checking a new Lightning release (run ``tests/test_lightning_compat.py`` and the preemption tests,
``tests/test_faults_cluster.py`` and ``tests/test_preemption_accumulation.py``), widen ``CHECKED_LIGHTNING``.
"""

from __future__ import annotations

import re
import sys
import warnings
from typing import Any, Optional

import lightning

# Lightning versions every entry of PRIVATE_API was read against (the 2.5.5, 2.5.6 and 2.6.6 sources; before
# 2.5.5 LightningCLI has no _parse_ckpt_path: ``fit --ckpt_path`` keeps the config's model section there)
CHECKED_LIGHTNING = (">=2.5.5", "<2.7")

# (owner, private member, why lit-lora needs it). The owner is a class's import path; "instance" members
# are set in ``__init__`` (tests/test_lightning_compat.py builds an instance to look for them).
PRIVATE_API: tuple[tuple[str, str, str], ...] = (
    ("lightning.pytorch.Trainer", "_run", "fit_ckpt_path: the ckpt_path argument of the running fit"),
    ("lightning.pytorch.Trainer", "_accelerator_connector", "cluster_environment"),
    ("lightning.pytorch.Trainer", "_checkpoint_connector", "hpc_save_path"),
    ("lightning.pytorch.Trainer", "_signal_connector", "handlers_lightning_restores, forget_lightning_sigterm"),
    ("lightning.pytorch.trainer.connectors.accelerator_connector._AcceleratorConnector", "cluster_environment",
     "cluster_environment"),
    ("lightning.pytorch.trainer.connectors.checkpoint_connector._CheckpointConnector", "hpc_save_path",
     "hpc_save_path: the hpc_ckpt_N.ckpt name Lightning's SLURM auto-resume picks up"),
    ("lightning.pytorch.trainer.connectors.checkpoint_connector._CheckpointConnector", "_hpc_resume_path",
     "run_files.hpc_checkpoints mirrors which hpc_ckpt_N.ckpt the auto-resume picks"),
    ("lightning.pytorch.trainer.connectors.signal_connector._SignalConnector", "_original_handlers",
     "handlers_lightning_restores (instance)"),
    ("lightning.pytorch.trainer.connectors.signal_connector._SignalConnector", "received_sigterm",
     "forget_lightning_sigterm (instance)"),
    ("lightning.pytorch.trainer.connectors.signal_connector._SignalConnector", "_has_already_handler",
     "PreemptionCheckpoint relies on Lightning not adding its own handler to a signal that has one"),
    ("lightning.pytorch.LightningModule", "_trainer", "attached_trainer (instance)"),
    ("lightning.pytorch.cli.LightningCLI", "_parse_ckpt_path",
     "ckpt_settings: LitLoraCLI.parse_arguments keeps the model section before this swaps in the checkpoint's"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_save_checkpoint", "AdapterCheckpoint overrides it"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_remove_checkpoint", "AdapterCheckpoint overrides it"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_should_skip_saving_checkpoint",
     "AdapterCheckpoint.on_train_end: save the final weights unless that step is saved"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_save_none_monitor_checkpoint",
     "AdapterCheckpoint.on_train_end: the final weights as the latest checkpoint"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_monitor_candidates", "AdapterCheckpoint.on_train_end"),
    ("lightning.pytorch.callbacks.ModelCheckpoint", "_save_last_checkpoint", "AdapterCheckpoint.on_train_end"),
    ("lightning.pytorch.loggers.csv_logs.ExperimentWriter", "_check_log_dir_exists",
     "ResumableCSVLogger's writer overrides it (keeps metrics.csv)"),
    ("lightning.pytorch.loggers.csv_logs.ExperimentWriter", "_fs", "filesystem_of (instance)"),
    ("lightning.pytorch.loggers.CSVLogger", "_fs", "filesystem_of (instance)"),
    ("lightning.pytorch.loggers.CSVLogger", "_experiment", "started_experiment / set_experiment (instance)"),
    ("lightning.pytorch.loggers.WandbLogger", "_experiment", "started_experiment (instance)"),
    ("lightning.pytorch.loggers.WandbLogger", "_offline", "wandb_offline (instance)"),
    ("lightning.pytorch.loggers.WandbLogger", "_wandb_init", "wandb_init_settings (instance)"),
)


class UncheckedLightningVersion(UserWarning):
    """The installed Lightning is outside ``CHECKED_LIGHTNING``: a private API lit-lora uses may have changed."""


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0])[:3])


def is_checked_version(version: str, checked: tuple[str, ...] = CHECKED_LIGHTNING) -> bool:
    """Whether ``version`` satisfies every ``>=X`` / ``<Y`` bound of ``checked``."""
    have = _version_tuple(version)
    for bound in checked:
        operator, limit = re.fullmatch(r"\s*(>=|<)\s*([\d.]+)\s*", bound).groups()
        if (have >= _version_tuple(limit)) != (operator == ">="):
            return False
    return True


def warn_if_unchecked(version: str = lightning.__version__) -> bool:
    """Warn (once per process) when ``version`` is not a checked one; returns whether it is."""
    if is_checked_version(version):
        return True
    warnings.warn(
        f"lit-lora was checked against Lightning {','.join(CHECKED_LIGHTNING)}, this is Lightning {version}: "
        f"preemption saves, SLURM resume and run-directory checks use private Lightning APIs listed in {__file__} "
        "(run tests/test_lightning_compat.py to see whether they still exist)", UncheckedLightningVersion,
        stacklevel=2)
    return False


warn_if_unchecked()


# ---- the trainer -------------------------------------------------------------------------------------
def fit_ckpt_path(trainer: Any) -> Optional[str]:
    """The checkpoint the running ``fit`` restores, known already in ``setup`` hooks.

    Lightning sets ``trainer.ckpt_path`` only when it restores, after the ``setup`` hooks; until then the path
    it chose (``fit(ckpt_path=...)``, or ``hpc_ckpt_N.ckpt`` by SLURM auto-resume) is the ``ckpt_path`` argument
    of ``Trainer._run``, read here from the call stack (``sys._getframe``). Outside a ``fit``: ``trainer.ckpt_path``.
    """
    from lightning.pytorch import Trainer

    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is Trainer._run.__code__ and frame.f_locals.get("self") is trainer:
            return frame.f_locals.get("ckpt_path")
        frame = frame.f_back
    return trainer.ckpt_path


def cluster_environment(trainer: Any) -> Any:
    """The trainer's cluster environment (``SLURMEnvironment`` under SLURM), for any strategy.

    ``trainer._accelerator_connector.cluster_environment``: single-device strategies have no public one.
    """
    return trainer._accelerator_connector.cluster_environment


def hpc_save_path(trainer: Any) -> str:
    """``<default_root_dir>/hpc_ckpt_<N+1>.ckpt``: the name Lightning's SLURM auto-resume loads next.

    ``trainer._checkpoint_connector.hpc_save_path``.
    """
    return trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)


def handlers_lightning_restores(trainer: Any) -> dict:
    """The signal -> handler dict Lightning puts back at teardown (mutable: an entry changed here is restored).

    ``trainer._signal_connector._original_handlers``.
    """
    return trainer._signal_connector._original_handlers


def forget_lightning_sigterm(trainer: Any) -> None:
    """Clear Lightning's "SIGTERM received" flag, which would stop ``fit`` after the current batch.

    ``trainer._signal_connector.received_sigterm``.
    """
    trainer._signal_connector.received_sigterm = False


def attached_trainer(module: Any) -> Any:
    """The Trainer a LightningModule is attached to, or ``None`` (``module.trainer`` raises when there is none).

    ``LightningModule._trainer``.
    """
    return getattr(module, "_trainer", None)


# ---- loggers -----------------------------------------------------------------------------------------
def filesystem_of(logger_or_writer: Any) -> Any:
    """The fsspec filesystem a ``CSVLogger`` / ``ExperimentWriter`` writes through (``._fs``)."""
    return logger_or_writer._fs


def started_experiment(logger: Any) -> Any:
    """The logger's experiment if already created, else ``None``, without creating it (``._experiment``)."""
    return logger._experiment


def set_experiment(logger: Any, experiment: Any) -> None:
    """Install ``experiment`` as the logger's (``._experiment``), as its ``experiment`` property would."""
    logger._experiment = experiment


def wandb_offline(logger: Any) -> bool:
    """Whether a ``WandbLogger`` was built with ``offline=True`` (``._offline``)."""
    return bool(logger._offline)


def wandb_init_settings(logger: Any) -> dict:
    """The (mutable) keyword arguments a ``WandbLogger`` passes to ``wandb.init`` (``._wandb_init``)."""
    return logger._wandb_init
