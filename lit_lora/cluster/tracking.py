"""Weights & Biases from YAML: one run per job, secrets redacted, the same run after a SLURM requeue.

    lit-lora fit --config configs/demo.yaml --config configs/loggers/wandb.yaml
    WANDB_MODE=offline lit-lora fit …      # no server: real run files under <run dir>/wandb, `wandb sync` later

``WandbRun`` is Lightning's ``WandbLogger`` plus these things: the run id is kept in
``<save_dir>/wandb_run_id`` once the run has started, so a requeued job (same run directory) continues the same run,
without logging again the steps the run already holds (``lit_lora.cluster.wandb_history``); every hyperparameter,
and every secret option of the command line wandb records, is passed through ``redact``; the whole CLI config is
logged as the run config; no API key (or a wrong one) with W&B online is one error naming the fix; the CLI holds
the run (``hold``) until lit-lora's run-directory check has passed, so a refused run starts none; and a
W&B server that cannot be reached within ``init_timeout`` seconds does not stop the run: it logs to an
offline run of the same id instead, with a warning naming the ``wandb sync <dir>`` that uploads it later::

    [lit-lora] W&B server https://api.wandb.ai not reachable within 60 s (CommError: ...); logging run 1a2b3c4d
    offline to runs/exp/123/wandb/offline-run-20250101_120000-1a2b3c4d: upload it later with
    `wandb sync runs/exp/123/wandb/offline-run-20250101_120000-1a2b3c4d`
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from lit_lora.cli_links import linked_names
from lit_lora.cluster.lightning_compat import started_experiment, wandb_init_settings, wandb_offline
from lit_lora.cluster.wandb_history import LoggedSteps
from lit_lora.errors import InputError

log = logging.getLogger("lit_lora")

REDACTED = "***redacted***"
SECRET_WORDS = ("token", "key", "secret", "password", "passwd", "apikey", "credential")
RUN_ID_FILE = "wandb_run_id"


class WandbLoginError(InputError, RuntimeError):
    """W&B online with no API key, or a wrong one: the run would log nothing, so it stops before training."""


def is_secret(key: str, value: Any) -> bool:
    """A string value under a key with a secret-looking word: ``hf_token``, ``api_key``, ``db_password`` …

    Words are the key's parts split on ``_ . - /`` and camelCase, so ``tokenizer_name_or_path`` and
    ``max_new_tokens`` are kept, and numbers / booleans (``pad_token_id: 0``) are never secrets.
    """
    if not isinstance(value, str) or not value:
        return False
    words = re.split(r"[_\.\-/\s]+|(?<=[a-z])(?=[A-Z])", str(key))
    return any(w.lower() in SECRET_WORDS for w in words)


def redact(params: Any, key: str = "") -> Any:
    """Copy of nested dicts / lists with every secret value replaced by ``REDACTED``."""
    if isinstance(params, Mapping):
        return {k: redact(v, str(k)) for k, v in params.items()}
    if isinstance(params, (list, tuple)):
        return type(params)(redact(v, key) for v in params)
    return REDACTED if is_secret(key, params) else params


def redact_argv(argv: list[str]) -> list[str]:
    """``argv`` with the value of every secret option (``--model.init_args.hf_token VALUE`` or ``…=VALUE``) redacted."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        option, eq, value = arg.partition("=")
        leaf = option.lstrip("-").rsplit(".", 1)[-1]
        if option.startswith("--") and eq and is_secret(leaf, value):
            arg = f"{option}={REDACTED}"
        elif i and argv[i - 1].startswith("--") and "=" not in argv[i - 1] and not arg.startswith("--") and \
                is_secret(argv[i - 1].lstrip("-").rsplit(".", 1)[-1], arg):
            arg = REDACTED
        out.append(arg)
    return out


@contextlib.contextmanager
def redacted_argv() -> Iterator[None]:
    """While wandb starts a run: it records the command line with the run (``args`` in its metadata), where a secret
    given as an option would reach W&B past the redacted config."""
    saved = sys.argv
    sys.argv = redact_argv(list(saved))
    try:
        yield
    finally:
        sys.argv = saved


def _namespace_to_dict(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        value = value.as_dict()
    if isinstance(value, Mapping):
        return {k: _namespace_to_dict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_namespace_to_dict(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


class WandbRun(WandbLogger):
    """Lightning's ``WandbLogger`` with a run id kept in the run directory and secrets redacted.

    Args:
        project: W&B project.
        entity: W&B team or user (``None``: your default entity).
        name: Display name of the run (default: W&B's generated name).
        group: Group runs together, e.g. one experiment's seeds or a sweep.
        tags: Tags to filter runs by.
        notes: A longer description of the run.
        offline: Write the run locally only (``wandb sync <dir>`` uploads it later); also ``WANDB_MODE=offline``.
        save_dir: Where ``wandb/`` and the run id file go; the CLI fills in ``trainer.default_root_dir``.
        log_model: Upload checkpoints as W&B artifacts (``False``, ``True`` = at the end, ``all``).
        init_timeout: Seconds to wait for the W&B server at start; unreachable by then, the run logs offline
            (``wandb sync`` later) instead of stopping. wandb's account look-up before it adds up to 10 s.
            ``None``: wandb's own (``WANDB_INIT_TIMEOUT``, else 90).
    """

    def __init__(self, project: str = "lit-lora", entity: Optional[str] = None, name: Optional[str] = None,
                 group: Optional[str] = None, tags: Optional[list[str]] = None, notes: Optional[str] = None,
                 offline: bool = False, save_dir: Optional[str] = None, log_model: bool | str = False,
                 init_timeout: Optional[float] = 60.0):
        save_dir = save_dir or os.getcwd()
        stored = self.stored_run_id(save_dir)
        run_id = stored or self.new_run_id()
        settings = {} if init_timeout is None else {"settings": {"init_timeout": float(init_timeout)}}
        super().__init__(project=project, entity=entity, name=name, group=group, tags=tags, notes=notes,
                         offline=offline, save_dir=save_dir, id=run_id, log_model=log_model, **settings)
        self._unsaved_id_file = None if stored else Path(save_dir) / RUN_ID_FILE  # written when the run starts
        self._held = False
        self._held_calls: list[tuple[str, tuple]] = []
        self._flat_keys: set[str] = set()  # after log_config: the module's and datamodule's argument names
        self._logged_steps: Optional[LoggedSteps] = None  # on rank 0, at the first metrics
        if wandb_init_settings(self).get("anonymous", "") is None:  # Lightning passes None; wandb warns on any value
            del wandb_init_settings(self)["anonymous"]

    def hold(self) -> None:
        """Start no W&B run until ``release``: lit-lora checks the run directory first (``RunDirectoryCheck``), so
        a refused run leaves nothing in W&B. Hyperparameters and metrics logged meanwhile wait for ``release``;
        any other use of ``experiment`` meanwhile gets ``None`` and fails loudly."""
        self._held = True

    def release(self) -> None:
        """Let the run start, and log what waited."""
        self._held = False
        calls, self._held_calls = self._held_calls, []
        for name, args in calls:
            getattr(self, name)(*args)

    @property
    @rank_zero_experiment
    def experiment(self):
        """The W&B run; an offline one of the same id when the server cannot be reached (see the module doc)."""
        if self._held and started_experiment(self) is None:
            return None  # Lightning's setup asks for it before the callbacks' setup, where the check runs
        if started_experiment(self) is not None:
            return super().experiment
        with redacted_argv():
            run = self._start()
        if self._unsaved_id_file is not None:
            # a new run that started: keep its id for a requeued job. Not before: a start that failed (no API key)
            # would leave a run directory that the corrected command may not start in
            self._unsaved_id_file.parent.mkdir(parents=True, exist_ok=True)
            self._unsaved_id_file.write_text(wandb_init_settings(self)["id"] + "\n")
            self._unsaved_id_file = None
        return run

    def _start(self):
        """Lightning's start of the run, offline when the server cannot be reached, a clear error without a login."""
        if wandb_offline(self):
            return super().experiment
        from wandb.errors import AuthenticationError, CommError, UsageError

        try:
            return super().experiment
        except (AuthenticationError, UsageError) as err:  # no key, or a wrong one: for the user to fix
            if isinstance(err, UsageError) and "API key" not in str(err):
                raise
            raise WandbLoginError(self._login_advice(err)) from err
        except (CommError, TimeoutError) as err:
            return self._start_offline(err)

    def _login_advice(self, error: BaseException) -> str:
        """One line for a run that cannot log in: wandb's reason, and the two ways on (log in, or offline)."""
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        runs = Path(self.save_dir or ".") / "wandb" / "offline-run-*"
        return (f"W&B cannot start the run online ({reason.rstrip('.')}): log in on this machine (`wandb login`, or "
                f"set WANDB_API_KEY), or log offline (WANDB_MODE=offline, or --trainer.logger.init_args.offline true) "
                f"and upload it later with `wandb sync {runs}`")

    def _start_offline(self, error: BaseException):
        """Start this run offline after ``error``; wandb's service still holds the failed online start: restart it."""
        import wandb

        wandb.teardown()
        wandb_init_settings(self)["mode"] = "offline"
        run = super().experiment
        sync_dir = run.settings.sync_dir
        log.warning("[lit-lora] W&B server %s not reachable within %s s (%s: %s); logging run %s offline to %s: "
                    "upload it later with `wandb sync %s`", run.settings.base_url, run.settings.init_timeout,
                    type(error).__name__, (str(error).splitlines() or [''])[0], run.id, sync_dir, sync_dir)
        return run

    @staticmethod
    def stored_run_id(save_dir: str) -> Optional[str]:
        """The id in ``save_dir/wandb_run_id`` (a requeued job's run), or ``None``."""
        path = Path(save_dir) / RUN_ID_FILE
        return (path.read_text().strip() or None) if path.is_file() else None

    @staticmethod
    def new_run_id() -> str:
        from wandb.sdk.lib.runid import generate_id

        return generate_id()

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        if hasattr(params, "as_dict") or not isinstance(params, Mapping):
            params = _namespace_to_dict(params) if hasattr(params, "as_dict") else vars(params)
        params = {k: v for k, v in dict(params).items() if k != "_instantiator"}  # Lightning's internal key
        if self._flat_keys and params and params.keys() <= self._flat_keys:
            # Lightning's flat copy of the module's and datamodule's arguments: already under config.model /
            # config.data, where a data seed is not mistaken for seed_everything
            return
        if self._held:
            self._held_calls.append(("log_hyperparams", (params,)))
            return
        super().log_hyperparams(redact(params))

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: Optional[int] = None) -> None:
        """Log ``metrics``, less those an earlier job of this run already logged at ``step`` (``LoggedSteps``)."""
        if self._held:
            self._held_calls.append(("log_metrics", (dict(metrics), step)))
            return
        if step is None:
            super().log_metrics(metrics, step)
            return
        if self._logged_steps is None:
            self._logged_steps = LoggedSteps(Path(self.save_dir or "."), wandb_init_settings(self)["id"])
        metrics = self._logged_steps.new(metrics, step)
        if metrics:
            super().log_metrics(metrics, step)
            self._logged_steps.record(metrics, step)

    def log_config(self, config: Any) -> None:
        """Log the full CLI config (a jsonargparse Namespace) under ``config/…``, redacted; the flat copy of the
        module's and datamodule's arguments Lightning logs next is then left out."""
        full = _namespace_to_dict(config)
        self.log_hyperparams({"config": full})
        self._flat_keys = {key for section in ("model", "data") if isinstance(full.get(section), dict)
                           for key in (full[section].get("init_args") or {})} | LINKED_ARGUMENTS

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        if status == "preempted" and started_experiment(self) is not None:
            # the requeued job resumes this run id; mark the gap instead of a clean finish
            started_experiment(self).mark_preempting()


# arguments the CLI links from another section (lit_lora/cli_links.py): in the module's / datamodule's hparams but
# not in the saved config
LINKED_ARGUMENTS = linked_names()


def fill_save_dirs(trainer_config: Any) -> None:
    """Point every ``WandbRun`` without ``save_dir`` at ``trainer.default_root_dir`` (its run directory)."""
    loggers = trainer_config.get("logger")
    if not isinstance(loggers, list):
        loggers = [loggers]
    root = trainer_config.get("default_root_dir") or os.getcwd()
    for entry in loggers:
        class_path = getattr(entry, "class_path", None) if entry is not None else None
        if class_path and class_path.endswith("WandbRun"):
            if entry.init_args.get("save_dir") is None:
                entry.init_args["save_dir"] = str(root)
