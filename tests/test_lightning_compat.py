"""The private Lightning APIs lit-lora relies on exist on the installed Lightning, each checked by name.

``lit_lora/cluster/lightning_compat.py`` lists them (``PRIVATE_API``) with the Lightning versions they were
read against (``CHECKED_LIGHTNING``). On a Lightning upgrade this file fails first, naming the member that
moved, instead of a preemption save or a SLURM resume failing deep inside a run. Nothing outside that
module may reach into Lightning's internals (``test_no_private_lightning_api_outside_the_compat_module``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import signal
from pathlib import Path

import lightning
import pytest
from harness import REPO, quiet_trainer
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.demos.boring_classes import BoringModel

import lit_lora
from lit_lora.cluster import lightning_compat
from lit_lora.cluster.launch_checks import hpc_checkpoints

COMPAT_FILE = Path(lightning_compat.__file__)


def cpu_trainer(root: Path, **kwargs) -> Trainer:
    return quiet_trainer(devices=1, default_root_dir=str(root), **kwargs)


def resolve(owner: str):
    module, _, name = owner.rpartition(".")
    return getattr(importlib.import_module(module), name)


def instance_of(owner: str, tmp_path: Path):
    """An object of ``owner`` to look for members ``__init__`` sets (``None`` when there is no recipe)."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    trainer = cpu_trainer(tmp_path)
    recipes = {
        "lightning.pytorch.Trainer": lambda: trainer,
        "_AcceleratorConnector": lambda: trainer._accelerator_connector,
        "_SignalConnector": lambda: trainer._signal_connector,
        "lightning.pytorch.LightningModule": LightningModule,
        "lightning.pytorch.loggers.csv_logs.ExperimentWriter": lambda: ExperimentWriter(log_dir=str(tmp_path / "csv")),
        "lightning.pytorch.loggers.CSVLogger": lambda: CSVLogger(save_dir=str(tmp_path)),
        "lightning.pytorch.loggers.WandbLogger": lambda: WandbLogger(offline=True, save_dir=str(tmp_path)),
    }
    recipe = recipes.get(owner) or recipes.get(owner.rpartition(".")[2])
    return recipe() if recipe else None


def test_the_installed_lightning_is_one_the_compat_module_was_checked_against():
    assert lightning_compat.is_checked_version(lightning.__version__), (
        f"Lightning {lightning.__version__} is outside CHECKED_LIGHTNING {lightning_compat.CHECKED_LIGHTNING} of "
        f"{COMPAT_FILE}: check every entry of PRIVATE_API against it (the tests below, then "
        "tests/test_faults_cluster.py and tests/test_preemption_accumulation.py) and widen the range")


@pytest.mark.parametrize("owner, member, why", lightning_compat.PRIVATE_API,
                         ids=[f"{o.rpartition('.')[2]}.{m}" for o, m, _ in lightning_compat.PRIVATE_API])
def test_each_private_member_lit_lora_uses_exists(owner, member, why, tmp_path):
    cls = resolve(owner)
    if hasattr(cls, member):
        return
    obj = instance_of(owner, tmp_path)
    assert obj is not None and hasattr(obj, member), (
        f"Lightning {lightning.__version__} has no {owner}.{member}, which lit-lora uses for {why} "
        f"(see {COMPAT_FILE})")


def test_version_ranges_and_the_warning_that_names_the_file():
    assert lightning_compat.is_checked_version("2.5.5") and lightning_compat.is_checked_version("2.6.6")
    assert not lightning_compat.is_checked_version("2.5.0") and not lightning_compat.is_checked_version("2.7.0rc1")
    with pytest.warns(lightning_compat.UncheckedLightningVersion, match=re.escape(str(COMPAT_FILE))):
        assert lightning_compat.warn_if_unchecked("3.0.0") is False


def test_fit_ckpt_path_reads_the_checkpoint_fit_restores_already_in_setup(tmp_path):
    assert "ckpt_path" in inspect.signature(Trainer._run).parameters

    class Record(Callback):
        def __init__(self):
            self.seen = []

        def setup(self, trainer, pl_module, stage):
            self.seen.append(lightning_compat.fit_ckpt_path(trainer))

    first = cpu_trainer(tmp_path, max_steps=1, limit_val_batches=0, callbacks=[Record()])
    first.fit(BoringModel())
    checkpoint = tmp_path / "step1.ckpt"
    first.save_checkpoint(checkpoint)
    second = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0, callbacks=[Record()])
    second.fit(BoringModel(), ckpt_path=str(checkpoint))
    assert first.callbacks[0].seen == [None] and second.callbacks[0].seen == [str(checkpoint)]


def test_hpc_checkpoint_names_agree_with_lightnings_slurm_auto_resume(tmp_path):
    trainer = cpu_trainer(tmp_path)
    assert Path(lightning_compat.hpc_save_path(trainer)).name == "hpc_ckpt_1.ckpt"
    for n in (1, 2, 10):
        (tmp_path / f"hpc_ckpt_{n}.ckpt").write_bytes(b"")
    assert Path(lightning_compat.hpc_save_path(trainer)).name == "hpc_ckpt_11.ckpt"
    assert Path(trainer._checkpoint_connector._hpc_resume_path) == hpc_checkpoints(tmp_path)[-1]


def test_signal_handler_accessors_and_the_cli_order_ckpt_settings_relies_on(tmp_path):
    trainer = cpu_trainer(tmp_path)
    assert isinstance(lightning_compat.handlers_lightning_restores(trainer), dict)
    lightning_compat.forget_lightning_sigterm(trainer)
    assert not trainer.received_sigterm
    # Lightning leaves a signal that already has a handler alone (PreemptionCheckpoint installs its own first)
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    before = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        assert _SignalConnector._has_already_handler(signal.SIGUSR1)
    finally:
        signal.signal(signal.SIGUSR1, before)
    from lightning.pytorch.cli import LightningCLI

    init = inspect.getsource(LightningCLI.__init__)
    assert init.index("self.parse_arguments(") < init.index("self._parse_ckpt_path()")
    assert lightning_compat.attached_trainer(BoringModel()) is None


def test_every_private_method_lit_lora_overrides_is_listed():
    """A lit-lora subclass of a Lightning class that defines a private name of its base must list it."""
    listed = {(resolve(owner), member) for owner, member, _ in lightning_compat.PRIVATE_API}
    unlisted = []
    for info in pkgutil.walk_packages(lit_lora.__path__, "lit_lora."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            for base in cls.__mro__[1:]:
                if not base.__module__.startswith("lightning."):
                    continue
                for name in vars(cls):
                    if not name.startswith("_") or name.startswith("__") or name == "_abc_impl" or \
                            name not in vars(base):
                        continue
                    if not any(member == name and owner in cls.__mro__ and issubclass(owner, base)
                               for owner, member in listed):
                        unlisted.append(f"{cls.__module__}.{cls.__qualname__}.{name} (of {base.__qualname__})")
    assert not unlisted, f"list these in PRIVATE_API of {COMPAT_FILE}: {sorted(set(unlisted))}"


# attribute reads / calls into Lightning's internals; the compat module is the one place allowed to hold them
PRIVATE_PATTERNS = re.compile(
    r"\._(?:accelerator|checkpoint|logger|signal|data|callback)_connector\b|sys\._getframe|\b_run\.__code__"
    r"|[\"']_trainer[\"']|\._trainer\b|\._experiment\b|\._fs\b|\._offline\b|\._wandb_init\b"
    r"|from lightning[\w.]* import _\w|lightning(?:\.\w+)*\._\w")


def test_no_private_lightning_api_outside_the_compat_module():
    found = []
    for path in sorted((REPO / "lit_lora").rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if path == COMPAT_FILE:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if PRIVATE_PATTERNS.search(code) and "``" not in code:
                found.append(f"{rel}:{number}: {line.strip()}")
    assert not found, f"use (or add) a function of {COMPAT_FILE} instead:\n" + "\n".join(found)
