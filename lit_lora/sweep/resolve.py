"""One resolved ``lit-lora fit`` config per sweep point, by lit-lora's own parser (``--print_config``, which the
command hands in: ``lit_lora.commands.experiment.print_config``).

    from lit_lora.commands.experiment import print_config
    from lit_lora.sweep.resolve import resolve_point, pin_run
    text, dropped = resolve_point(["configs/demo.yaml"], [],
                                  {"model.init_args.adapter": "lit_lora.adapters.FullFineTuning"}, print_config)
    config = pin_run(text, "runs/demo/adapter=FullFineTuning", sweep="demo", point="adapter=FullFineTuning")

``resolve_point`` parses ``fit --config … <base overrides> --KEY V …`` exactly as ``lit-lora fit`` does, so a
class path override drops the ``init_args`` the new class does not accept, as LightningCLI does, and a value
that ``fit`` would refuse is an error naming the point. A grid key that lies under a swept class path and is
not accepted by the point's class (``r`` of ``FullFineTuning``) is left out of that point (``dropped``).

``pin_run`` makes the point's run directory its own: ``trainer.default_root_dir`` is the point directory,
and a ``ResumableCSVLogger`` logging straight into it is the first logger (so ``trainer.log_dir`` is the
point directory, locally and under SLURM, and ``metrics.csv``, ``config.yaml``, ``run_summary.json``,
``before_after.json``, ``adapter/`` and, as ``checkpoint.dirpath`` stays unset (the sweep refuses one, which
every point would share), ``checkpoints/`` land there, a requeued array task continuing the same files).
Configured loggers stay after it; a ``WandbRun`` gets the sweep name as its group and, when it has
none, the point name as its run name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import yaml

from lit_lora.errors import InputError
from lit_lora.sweep.grid import override_args

CSV_LOGGER = "lit_lora.cluster.csv_history.ResumableCSVLogger"  # as a string: the sweep imports no Lightning
CSV_LOGGERS = (CSV_LOGGER, "lit_lora.csv_history.ResumableCSVLogger",  # the path before lit_lora.cluster
               "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.csv_logs.CSVLogger",
               "pytorch_lightning.loggers.CSVLogger")


PrintConfig = Callable[[list[str]], str]  # args -> what `lit-lora fit <args> --print_config` prints


class PointConfigError(InputError, ValueError):
    """``lit-lora fit`` would refuse this point's arguments; the message is the parser's error."""


def resolve_point(configs: list[str], base_args: list[str], overrides: dict[str, str],
                  print_config: PrintConfig) -> tuple[str, list[str]]:
    """The resolved config text of one point and the grid keys left out as not applicable (see the module doc);
    ``print_config(args)`` is what ``lit-lora fit <args> --print_config`` prints (a ``ValueError`` when ``fit``
    refuses the arguments): ``lit_lora.commands.experiment.print_config``."""
    head = [arg for config in configs for arg in ("--config", config)] + list(base_args)
    kept = dict(overrides)
    dropped: list[str] = []
    while True:
        try:
            return print_config(head + override_args(kept)), dropped
        except ValueError as err:
            # keys under a swept class path that the chosen class does not accept: not applicable to this point
            nested = [k for k in kept if any(k.startswith(parent + ".") for parent in kept)]
            refused = [k for k in nested if re.search(rf"Option '{re.escape(k.rsplit('.', 1)[1])}' is not accepted",
                                                      str(err))]
            if not refused:
                raise PointConfigError(str(err)) from err
            dropped.extend(refused)
            for key in refused:
                del kept[key]


def _entries(logger: Any) -> list:
    if logger in (None, True, False):
        return []
    return list(logger) if isinstance(logger, list) else [logger]


def pin_run(config_text: str, run_dir: str | Path, sweep: str, point: str) -> dict:
    """The resolved config with the point's run directory and loggers (see the module doc)."""
    config = yaml.safe_load(config_text)
    trainer = config.setdefault("trainer", {})
    run_dir = str(run_dir)
    trainer["default_root_dir"] = run_dir
    csv_logger = {"class_path": CSV_LOGGER,
                  "init_args": {"save_dir": run_dir, "name": "", "version": "", "flush_logs_every_n_steps": 1}}
    others = []
    for entry in _entries(trainer.get("logger")):
        class_path = entry.get("class_path", "") if isinstance(entry, dict) else ""
        if class_path in CSV_LOGGERS:
            continue  # replaced by the pinned one
        if class_path.endswith("WandbRun"):
            init_args = entry.setdefault("init_args", {})
            init_args["group"] = sweep
            init_args["name"] = init_args.get("name") or point
            init_args["save_dir"] = run_dir  # its own wandb_run_id per point, never one shared by the sweep
        others.append(entry)
    trainer["logger"] = [csv_logger, *others] if others else csv_logger
    return config


def checkpoint_dirpath(config_text: str) -> Any:
    """The configured ``checkpoint.dirpath`` (``None``: the run directory's ``checkpoints/``, a point's own)."""
    return (yaml.safe_load(config_text).get("checkpoint") or {}).get("dirpath")


def config_yaml(config: dict, header: list[str]) -> str:
    return "".join(f"# {line}\n" for line in header) + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)


def changed_settings(before: str, after: str, limit: int = 5) -> list[str]:
    """``["trainer.max_steps: 2 -> 3", …]``: the settings that differ between two point configs (YAML texts)."""
    old, new = flat_settings(yaml.safe_load(before)), flat_settings(yaml.safe_load(after))
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k, "(unset)") != new.get(k, "(unset)")]
    return [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys[:limit]] + \
        ([f"… {len(keys) - limit} more"] if len(keys) > limit else [])


def flat_settings(config: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"trainer.max_steps": 3, …}`` (lists stay values)."""
    if not isinstance(config, dict):
        return {prefix: config} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in config.items():
        out.update(flat_settings(value, f"{prefix}.{key}" if prefix else str(key)))
    return out
