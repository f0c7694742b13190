"""``--ckpt_path`` with other model settings than the config: an error listing them, not a silent swap.

Given ``--ckpt_path``, LightningCLI replaces the ``model:`` section of the config with the hyperparameters
stored in the checkpoint (``LightningCLI._parse_ckpt_path``), so ``fit`` would train the checkpoint's base,
adapter and optimizer settings whatever the config and command line say. ``fit`` stops instead, unless
``--resume_with_checkpoint_settings true`` says to go on with the checkpoint's (they are what the run's
``config.yaml`` then records). ``validate`` / ``test`` need the checkpoint's architecture
to load its weights: they go on and log what was replaced. Every other model setting says how to run, not
what was trained (``dtype``, ``attn_implementation``, ``gradient_checkpointing`` and QLoRA's default for it,
``label_only_loss``, ``compile``, ``evaluation.*``): there the config's value is kept, and each one that differs from the
checkpoint's is logged (``keep_run_settings``). Trainer and data settings are not compared here (``max_steps`` is meant to
change on a resume: the learning-rate schedule follows it, ``optim.continue_schedule``; the train loader
refuses another batch size, order or data seed mid-epoch, ``data/resumable.py``)::

    lit-lora fit --config configs/demo.yaml --ckpt_path runs/demo/…/last.ckpt --model.init_args.adapter.init_args.r 4
    # -> CheckpointSettingsMismatch: --ckpt_path runs/demo/…/last.ckpt was trained with other model settings …
    #      model.init_args.adapter.init_args.r: config 4, checkpoint 16
"""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any, Optional

from lit_lora.cli_links import linked_names
from lit_lora.cluster.run_files import run_of_checkpoint
from lit_lora.errors import CheckpointSettingsMismatch, InputError

log = logging.getLogger("lit_lora")

SWITCH = "resume_with_checkpoint_settings"
# model settings a resume must not change silently (keys under ``model``); evaluation / dtype settings may differ
COMPARED = ("class_path", "init_args.model_name_or_path", "init_args.adapter", "init_args.optim")
TRAINING_ONLY = ("init_args.optim",)  # irrelevant to validate / test
LINKED = tuple(sorted(linked_names("model")))  # set from the data when the classes are built, not run settings
# run settings inside a compared section: QLoRA's default for the module's gradient_checkpointing
RUN_SETTINGS_INSIDE = ("init_args.adapter.init_args.gradient_checkpointing",)


class MissingCheckpoint(InputError, FileNotFoundError):
    """``--ckpt_path`` names no file or directory, or none that holds a checkpoint."""


def check_ckpt_path_exists(ckpt_path: Optional[str]) -> None:
    """Fail before anything loads on a local ``--ckpt_path`` that does not exist (Lightning would find out after
    building the model and the data); ``last`` / ``best`` / ``hpc`` / ``registry`` and URLs are Lightning's."""
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or str(ckpt_path).startswith("registry") \
            or "://" in str(ckpt_path):
        return
    path = Path(ckpt_path)
    if not path.exists():
        raise MissingCheckpoint(f"--ckpt_path {ckpt_path}: no such file or directory")
    if path.is_dir() and not (path / "checkpoint").is_dir():  # a DeepSpeed checkpoint is a directory of that layout
        held = sorted(p.name for p in path.glob("*.ckpt"))
        listed = f"; it holds {', '.join(held[:3])}{', …' * (len(held) > 3)}: name one" if held else ""
        raise MissingCheckpoint(f"--ckpt_path {ckpt_path}: a directory, not a checkpoint{listed}")
    if path.is_file() and not zipfile.is_zipfile(path):  # torch.save's format, which Lightning writes
        if path.stat().st_size == 0 or path.suffix == ".ckpt":
            what = "an empty file" if path.stat().st_size == 0 else "cut short or damaged"
            raise MissingCheckpoint(f"--ckpt_path {ckpt_path}: {what}, not a whole checkpoint (a save or a copy that "
                                    "did not finish?)")
        adapter = " (adapter weights: lit-lora compare and merge take the adapter's directory as --adapter_dir)" \
            if path.suffix in (".safetensors", ".bin") else ""
        raise MissingCheckpoint(f"--ckpt_path {ckpt_path}: not a checkpoint Lightning wrote (a .ckpt file in a run's "
                                f"checkpoints/ directory){adapter}")


def check_steps_left(ckpt_path: Optional[str], max_steps: Optional[int]) -> None:
    """Refuse a ``fit --ckpt_path`` whose checkpoint already reached ``trainer.max_steps``: Lightning would train
    nothing, say nothing, and rewrite the run's ``config.yaml`` with the lower ``max_steps``."""
    if not ckpt_path or max_steps is None or max_steps < 0 or not Path(ckpt_path).is_file():
        return
    from lit_lora.cluster.csv_history import checkpoint_step  # by name (step=N), else the file's global_step

    step = checkpoint_step(Path(ckpt_path))
    if step is not None and step >= max_steps:
        raise CheckpointSettingsMismatch(
            f"--ckpt_path {ckpt_path} is at step {step} and trainer.max_steps is {max_steps}: nothing left to "
            "train. Raise trainer.max_steps to train on, or score it with lit-lora test --ckpt_path …")


def _as_dict(value: Any) -> Any:
    return value.as_dict() if hasattr(value, "as_dict") else value


def _flatten(value: Any, prefix: str, out: dict) -> dict:
    value = _as_dict(value)
    if isinstance(value, dict):
        for key, sub in value.items():
            _flatten(sub, f"{prefix}.{key}", out)
    else:
        out[prefix] = list(value) if isinstance(value, tuple) else value
    return out


def model_settings(model_config: Any, keys: tuple[str, ...] = COMPARED) -> dict[str, Any]:
    """``{"model.init_args.adapter.init_args.r": 16, …}``: the compared settings of a ``model`` config."""
    model = _as_dict(model_config) or {}
    out: dict[str, Any] = {}
    for key in keys:
        node: Any = model
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        _flatten(node, f"model.{key}", out)
    return out


def differences(given: Any, used: Any, keys: tuple[str, ...] = COMPARED) -> dict[str, tuple[Any, Any]]:
    """Settings that differ between the config given and the one LightningCLI took from the checkpoint."""
    a, b = model_settings(given, keys), model_settings(used, keys)
    run_settings = {f"model.{key}" for key in RUN_SETTINGS_INSIDE}
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k not in run_settings}


def _node(model: Any, key: str) -> tuple[Any, str]:
    """The dict holding ``key``'s last part in a ``model`` config (``None`` where a part is missing), and that part."""
    *path, last = key.split(".")
    node: Any = model
    for part in path:
        node = node.get(part) if hasattr(node, "get") else None
    return node, last


def _listing(diff: dict[str, tuple[Any, Any]]) -> str:
    return "\n".join(f"  {key}: config {given!r}, checkpoint {stored!r}" for key, (given, stored) in diff.items())


def keep_run_settings(given_model: Any, used_model: Any, ckpt_path: Optional[str]) -> dict[str, tuple[Any, Any]]:
    """Put the config's value back into ``used_model`` (the model section LightningCLI filled from the
    checkpoint) for every ``init_args`` key outside ``COMPARED``; log and return the ones that differed."""
    if not ckpt_path or given_model is None or used_model is None \
            or given_model.get("class_path") != used_model.get("class_path"):
        return {}
    given_args, used_args = given_model.get("init_args"), used_model.get("init_args")
    if given_args is None or used_args is None:
        return {}
    kept: dict[str, tuple[Any, Any]] = {}
    for key in _as_dict(given_args):
        if f"init_args.{key}" in COMPARED or key in LINKED:
            continue
        mine, stored = _flatten(given_args.get(key), key, {}), _flatten(used_args.get(key), key, {})
        kept.update({f"model.init_args.{k}": (mine.get(k), stored.get(k))
                     for k in sorted(set(mine) | set(stored)) if mine.get(k) != stored.get(k)})
        used_args[key] = given_args.get(key)
    for key in RUN_SETTINGS_INSIDE:
        (mine, name), (theirs, _) = _node(given_model, key), _node(used_model, key)
        if hasattr(mine, "get") and hasattr(theirs, "get") and name in mine and mine.get(name) != theirs.get(name):
            kept[f"model.{key}"] = (mine.get(name), theirs.get(name))
            theirs[name] = mine.get(name)
    if kept:
        log.warning("[lit-lora] --ckpt_path %s: running with this config's settings where the checkpoint's "
                    "differ:\n%s", ckpt_path, _listing(kept))
    return kept


def check_resume_settings(given_model: Any, used_model: Any, ckpt_path: Optional[str], subcommand: str,
                          accept: bool = False) -> None:
    """Raise on ``fit`` when the checkpoint's model settings replaced different ones, unless ``accept``; else log."""
    if not ckpt_path or given_model is None or used_model is None:
        return
    training = subcommand == "fit"
    keys = COMPARED if training else tuple(k for k in COMPARED if k not in TRAINING_ONLY)
    diff = differences(given_model, used_model, keys)
    if not diff:
        return
    if not training and "model.class_path" in diff:  # the config's data would meet another kind of model
        raise other_module(ckpt_path, diff["model.class_path"][1], diff["model.class_path"][0], subcommand)
    if training and not accept:
        raise CheckpointSettingsMismatch(
            f"--ckpt_path {ckpt_path} was trained with other model settings than this config, and resuming "
            f"would train with the checkpoint's, not yours:\n{_listing(diff)}\n"
            f"Set these keys to the checkpoint's values, or pass --{SWITCH} true to resume with the "
            "checkpoint's settings (the run's config.yaml records them), or drop --ckpt_path to start a new run")
    log.warning("[lit-lora] %s with the model settings stored in %s, not the config's:\n%s",
                "resuming" if training else f"{subcommand} runs", ckpt_path, _listing(diff))


def other_module(ckpt_path: str, stored: str, given: str, command: str) -> CheckpointSettingsMismatch:
    """The error for a checkpoint of another LightningModule than the config's, with its run's config to use."""
    run = run_of_checkpoint(ckpt_path)
    saved = run / "config.yaml" if run else None
    return CheckpointSettingsMismatch(
        f"--ckpt_path {ckpt_path} holds a {stored}, this config a {given}: score a checkpoint with the config of "
        f"its run" + (f" (lit-lora {command} --config {saved} --ckpt_path {ckpt_path})" if saved and saved.is_file() else ""))


def check_checkpoint_module(ckpt_path: str, model: Any, command: str) -> None:
    """Refuse a Lightning checkpoint file whose stored module class (LightningCLI's hyperparameters) is not the
    ``model`` config's, or whose adapter settings differ from its (``compare`` builds the config's model and loads
    the checkpoint's weights into it: a LoRA on other layers would be scored as the trained model), before anything
    is built; read memory-mapped, so only the hyperparameters are touched."""
    class_path = (_as_dict(model) or {}).get("class_path")
    if not class_path or not Path(ckpt_path).is_file():
        return
    import torch

    stored = dict(torch.load(ckpt_path, map_location="cpu", mmap=True, weights_only=False).get("hyper_parameters")
                  or {})
    stored_class = stored.pop("_class_path", None)
    if stored_class and stored_class != class_path:
        raise other_module(ckpt_path, stored_class, class_path, command)
    ignored = {"model.init_args.adapter.init_args.dropout"}  # training only
    diff = {k: v for k, v in differences(model, {"class_path": stored_class, "init_args": stored},
                                         ("init_args.adapter",)).items() if k not in ignored}
    if stored_class and "adapter" in stored and diff:
        run = run_of_checkpoint(ckpt_path)
        saved = run / "config.yaml" if run else None
        raise CheckpointSettingsMismatch(
            f"--ckpt_path {ckpt_path} was trained with other adapter settings than this config, whose model would "
            f"not hold the checkpoint's weights:\n{_listing(diff)}\nscore it with the config of its run"
            + (f" (lit-lora {command} --config {saved} --ckpt_path {ckpt_path})" if saved and saved.is_file() else ""))
