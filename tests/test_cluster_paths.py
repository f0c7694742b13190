"""``lit_lora.cluster`` and the old flat module paths: configs written before the move keep working.

Every name the old modules (``lit_lora.preemption``, ``lit_lora.tracking`` …) export is the very object of
``lit_lora.cluster.<module>``, and every class path configs, docs or saved run configs used before the move
(``lit_lora.tracking.WandbRun`` in ``configs/loggers/wandb.yaml``, ``lit_lora.sharding.DecoderLayerWrapPolicy``
in ``configs/strategies/fsdp.yaml``, ``lit_lora.csv_history.ResumableCSVLogger`` in the ``config.yaml`` of
SLURM runs) still resolves and instantiates through jsonargparse, as LightningCLI does.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch import Callback
from lightning.pytorch.loggers import Logger
from torch.distributed.fsdp.wrap import ModuleWrapPolicy

REPO = Path(__file__).resolve().parents[1]
MOVED = ("preemption", "checkpoint_io", "csv_history", "launch_checks", "sharding", "tracking")
# old class path -> (base type a config field declares, init_args, new class path)
OLD_CLASS_PATHS = {
    "lit_lora.tracking.WandbRun":
        (Logger, {"save_dir": "{tmp}", "offline": True}, "lit_lora.cluster.tracking.WandbRun"),
    "lit_lora.sharding.DecoderLayerWrapPolicy":
        (ModuleWrapPolicy, {}, "lit_lora.cluster.sharding.DecoderLayerWrapPolicy"),
    "lit_lora.csv_history.ResumableCSVLogger":
        (Logger, {"save_dir": "{tmp}", "name": "", "version": ""}, "lit_lora.cluster.csv_history.ResumableCSVLogger"),
    "lit_lora.checkpoint_io.AtomicCheckpointIO":
        (CheckpointIO, {}, "lit_lora.cluster.checkpoint_io.AtomicCheckpointIO"),
    "lit_lora.preemption.PreemptionCheckpoint":
        (Callback, {"enabled": False}, "lit_lora.cluster.preemption.PreemptionCheckpoint"),
}


def import_path(path: str):
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize("name", MOVED)
def test_old_module_reexports_the_same_objects(name):
    old = importlib.import_module(f"lit_lora.{name}")
    assert "moved to ``lit_lora.cluster." in old.__doc__.lower() and "existing configs keep working" in old.__doc__
    assert old.__all__
    cluster = [importlib.import_module(f"lit_lora.cluster.{m}") for m in (*MOVED, "lightning_compat")]
    for attr in old.__all__:
        here = getattr(old, attr)
        assert any(getattr(module, attr, None) is here for module in cluster), f"lit_lora.{name}.{attr}"
        home = getattr(here, "__module__", "lit_lora.cluster.")
        assert home.startswith("lit_lora.cluster."), f"lit_lora.{name}.{attr} comes from {home}"


@pytest.mark.parametrize("old", sorted(OLD_CLASS_PATHS))
def test_old_class_path_loads_the_new_class_through_jsonargparse(old, tmp_path):
    base, init_args, new = OLD_CLASS_PATHS[old]
    new_class = import_path(new)
    assert import_path(old) is new_class
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--obj", type=base)
    args = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in init_args.items()}
    config = parser.parse_object({"obj": {"class_path": old, "init_args": args}})
    assert type(parser.instantiate_classes(config).obj) is new_class


def test_every_lit_lora_class_path_in_configs_and_docs_resolves():
    """Reference configs, docs and README name only importable lit_lora class paths (old or new)."""
    found = set()
    for path in [*REPO.glob("configs/**/*.yaml"), *REPO.glob("docs/*.md"), REPO / "README.md"]:
        found |= set(re.findall(r"class_path:\s*(lit_lora\.[\w.]+)", path.read_text()))
    for path in REPO.glob("configs/**/*.yaml"):
        text = yaml.safe_load(path.read_text())
        assert text is None or isinstance(text, dict)
    assert "lit_lora.cluster.tracking.WandbRun" in found and "lit_lora.cluster.sharding.DecoderLayerWrapPolicy" in found
    for class_path in sorted(found):
        assert isinstance(import_path(class_path), type), class_path


def test_the_cluster_package_says_what_each_module_does():
    import lit_lora.cluster as cluster

    for name in (*MOVED, "runtime", "lightning_compat"):
        assert f"``{name}``" in cluster.__doc__
        assert importlib.import_module(f"lit_lora.cluster.{name}").__doc__
