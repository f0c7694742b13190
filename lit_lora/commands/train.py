"""``lit-lora fit / validate / test``: the LightningCLI over every lit-lora module and datamodule.

    lit-lora fit --config configs/demo.yaml
    lit-lora fit --config configs/demo.yaml --print_config > my.yaml   # a config --config accepts back
    lit-lora test --config configs/demo.yaml --ckpt_path runs/demo/.../checkpoints/last.ckpt

    from lit_lora.commands.train import LitLoraCLI
    cli = LitLoraCLI(args=["--config", "configs/demo.yaml"], run=False)   # built, nothing run
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)

The tokenizer name follows ``model.init_args.model_name_or_path`` and the tokenizer object built by
the datamodule is handed to the model (``link_arguments``): neither is repeated in a YAML. ``LitLoraCLI`` is
also the parser of every other command that reads an experiment config (``lit_lora.commands.experiment``).

``fit --ckpt_path`` refuses a checkpoint trained with other model settings than the config (see
``lit_lora.ckpt_settings``; ``--resume_with_checkpoint_settings true`` resumes with the checkpoint's), and
``finite_guard:`` stops a run at a NaN / inf loss or gradient (see ``lit_lora.finite_guard``). The cluster
runtime (SLURM preemption and requeue, atomic checkpoints, run-directory checks, W&B) is ``lit_lora.cluster``.
"""

from __future__ import annotations

import sys
import time
from typing import Optional

from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_lora import console
from lit_lora.callbacks import AdapterCheckpoint, BaselineComparison, FinalExport, MetricsWriter
from lit_lora.ckpt_settings import SWITCH, check_ckpt_path_exists, check_resume_settings, check_steps_left, \
    keep_run_settings
from lit_lora.compatibility import check_config
from lit_lora.cpu_bf16 import Bf16Hint
from lit_lora.data.base import TextDataModule
from lit_lora.finite_guard import FiniteGuard
from lit_lora.cluster.csv_history import default_csv_logger, pin_log_dir
from lit_lora.cluster.launch_checks import check_allocation
from lit_lora.cluster.preemption import PreemptionCheckpoint, resume_newest
from lit_lora.cluster.run_dir import evaluation_dirs, run_dir
from lit_lora.cluster.runtime import install_atomic_saves, runtime_callbacks
from lit_lora.cluster.tracking import WandbRun, fill_save_dirs
from lit_lora.cli_links import LINKS
from lit_lora.commands.config_errors import check_linked, config_files, explain, undecodable
from lit_lora.commands.config_layers import check_layers
from lit_lora.model_source import resolve_model_path
from lit_lora.models.base import FineTuneModule
from lit_lora.models.from_config import check_model_kind


def as_list(value) -> list:
    """A config's ``callbacks`` (none, one or a list) as a new list."""
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def with_descriptions(parser_kwargs: Optional[dict]) -> dict:
    """``parser_kwargs`` with lit-lora's help line as ``fit`` / ``validate`` / ``test --help``'s description
    (Lightning's is the Trainer method's docstring, cut mid-sentence)."""
    from lit_lora.commands import COMMANDS

    parser_kwargs = dict(parser_kwargs or {})
    for name in ("fit", "validate", "test"):
        parser_kwargs[name] = {"description": f"lit-lora {name}: {COMMANDS[name].help}", **parser_kwargs.get(name, {})}
    return parser_kwargs


RUN = "runs/demo/lightning_logs/version_0"  # where the demo's first run goes
EXAMPLES = {  # the line under ``--help``'s usage
    "fit": "lit-lora fit --config configs/demo.yaml --trainer.max_steps 50   (`lit-lora configs list`: the others)",
    "validate": f"lit-lora validate --config {RUN}/config.yaml --ckpt_path {RUN}/checkpoints/last.ckpt",
    "test": f"lit-lora test --config {RUN}/config.yaml --ckpt_path {RUN}/checkpoints/last.ckpt",
    "compare": f"lit-lora compare --config {RUN}/config.yaml --adapter_dir {RUN}/adapter",
    "estimate": "lit-lora estimate --config configs/demo.yaml --gpu_memory_gib 24",
    "merge": f"lit-lora merge --config {RUN}/config.yaml --adapter_dir {RUN}/adapter",
    "incontext": "lit-lora incontext --config configs/demo.yaml --shots 0 1 --max_rows 50",
}


class ShortUsageParser(LightningArgumentParser):
    """On a mistyped option, one usage line above jsonargparse's error instead of every option the CLI has
    (``--help`` still lists them all), and a mistake in a ``--config`` file named by file and line."""

    config_files: list[str] = []  # the command line's, set by LitLoraCLI

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --trainer.max_ste 3 is a mistake, not trainer.max_steps
        super().__init__(*args, **kwargs)

    def format_usage(self) -> str:
        prog = self.prog.replace(" [options]", "")
        return f"usage: {prog} --config FILE [--model.… / --data.… / --trainer.… VALUE]\n"

    def format_help(self, *args, **kwargs) -> str:
        """The short usage and an example at the top: argparse's usage lists every option, a hundred lines
        before the description."""
        if self.usage is not None:
            return super().format_help(*args, **kwargs)
        example = EXAMPLES.get(self.prog.replace(" [options]", "").removeprefix("lit-lora").strip())
        usage = self.format_usage().removeprefix("usage: ").rstrip()
        self.usage = usage + (f"\n  e.g.  {example}" if example else "")
        try:
            return super().format_help(*args, **kwargs)
        finally:
            self.usage = None

    def error(self, message: str, ex: Optional[Exception] = None):
        if self.exit_on_error:  # the parser that prints, not a nested one raising to it
            parser = getattr(ex, "subcommand_parser", None) or self  # fit / validate / test: the subcommand's
            message = explain(message, ShortUsageParser.config_files, parser)
        return super().error(message, ex)


class LitLoraCLI(LightningCLI):
    """LightningCLI over every lit-lora module and datamodule, with the export callbacks always on."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("parser_class", ShortUsageParser)
        # the optimizer is model.init_args.optim (FineTuneModule.configure_optimizers); LightningCLI's own
        # --optimizer / --lr_scheduler would be overridden by it (or crash on a model without parameters)
        kwargs.setdefault("auto_configure_optimizers", False)
        if not console.verbose():  # lit-lora prints its own parameter counts; the table ends in "Total FLOPs: 0"
            kwargs.setdefault("trainer_defaults", {"enable_model_summary": False})
        kwargs["parser_kwargs"] = with_descriptions(kwargs.get("parser_kwargs"))
        self._started = time.perf_counter()
        ShortUsageParser.config_files = config_files(kwargs.get("args") or [])
        super().__init__(FineTuneModule, TextDataModule, *args, **kwargs)

    def instantiate_trainer(self, **kwargs):
        """Lightning's trainer with lit-lora's step-based progress bar (unless the config brings a bar or turns it
        off), a learning-rate monitor (unless there is no logger), the cluster runtime's callbacks
        (``lit_lora.cluster.runtime``), the CPU bfloat16 hint (``lit_lora.cpu_bf16``) and atomic checkpoint writes."""
        config = self.config_init.get(self.subcommand) if self.subcommand else self.config_init
        if "callbacks" not in kwargs:
            trainer_config = config.get("trainer") or {}
            callbacks = as_list(trainer_config.get("callbacks"))
            if trainer_config.get("enable_progress_bar", True) is not False and \
                    not any(isinstance(c, ProgressBar) for c in callbacks):
                callbacks.append(console.StepProgressBar())
            if trainer_config.get("logger", True) is not False and \
                    not any(isinstance(c, LearningRateMonitor) for c in callbacks):
                callbacks.append(LearningRateMonitor(logging_interval="step"))  # the "lr" curve of every logger
            kwargs["callbacks"] = callbacks
        settings = self.config[self.subcommand] if self.subcommand else self.config
        resumes = settings.get("ckpt_path") if self.subcommand == "fit" else None
        if "logger" not in kwargs:
            logger = default_csv_logger(settings.trainer, resumes)
            if logger is not None:
                kwargs["logger"] = logger
        preemption = config.get("preemption")
        # before the `preemption` callback, which LightningCLI appends after these
        kwargs["callbacks"] = [*as_list(kwargs["callbacks"]), *runtime_callbacks(preemption), Bf16Hint()]
        trainer = super().instantiate_trainer(**kwargs)
        install_atomic_saves(trainer, preemption)
        if self.subcommand in (None, "fit") and not resumes:  # a --ckpt_path given is the checkpoint resumed
            resume_newest(trainer)
        for logger in trainer.loggers:  # RunDirectoryCheck releases it: a refused run starts no W&B run
            if isinstance(logger, WandbRun):
                logger.hold()
        return trainer

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(AdapterCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FinalExport, "export")
        parser.add_lightning_class_args(BaselineComparison, "baseline")
        parser.add_lightning_class_args(MetricsWriter, "metrics")
        parser.add_lightning_class_args(PreemptionCheckpoint, "preemption")
        parser.add_lightning_class_args(FiniteGuard, "finite_guard")
        parser.add_argument(f"--{SWITCH}", type=bool, default=False,
                            help="With --ckpt_path: resume with the model settings stored in the checkpoint when "
                                 "they differ from the config's (otherwise fit stops and lists them)")
        for link in LINKS:  # lit_lora/cli_links.py
            parser.link_arguments(link.source, link.target, apply_on=link.apply_on)

    def parse_arguments(self, parser, args) -> None:
        """Keep the ``model`` section as given: LightningCLI then swaps in a ``--ckpt_path``'s hyperparameters
        (``before_instantiate_classes`` compares the two and puts the run settings back). A value for a linked
        key is refused first: jsonargparse would drop it silently. A ``--ckpt_path`` that holds no checkpoint (empty,
        cut short, another format) is named before LightningCLI ``torch.load``s it for those hyperparameters."""
        argv = sys.argv[1:] if args is None else args
        unreadable = undecodable(config_files(argv))
        if unreadable:  # the usage line of fit / validate / test where there is one
            subcommands = getattr(parser, "_subcommands_action", None)
            by_name = getattr(subcommands, "_name_parser_map", {})
            (by_name.get(argv[0] if argv else None) or parser).error(unreadable)
        self._given_keys = check_layers(argv)
        check_linked(argv)
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_ckpt_path_exists(self.config[subcommand].get("ckpt_path"))
        given = self.config[subcommand].get("model") if subcommand else None
        self._given_model = given.clone() if given is not None else None

    def before_instantiate_classes(self) -> None:
        """Fail on a checkpoint with other model settings, an impossible strategy / method combination or a
        mismatched SLURM allocation, early."""
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if self.subcommand:
            check_ckpt_path_exists(config.get("ckpt_path"))
            if self.subcommand == "fit":
                check_steps_left(config.get("ckpt_path"), config.trainer.get("max_steps"))
            keep_run_settings(getattr(self, "_given_model", None), config.get("model"), config.get("ckpt_path"))
            check_resume_settings(getattr(self, "_given_model", None), config.get("model"), config.get("ckpt_path"),
                                  self.subcommand, accept=bool(config.get(SWITCH)))
        if self.subcommand in ("test", "validate") and not console.verbose() and \
                "verbose" not in getattr(self, "_given_keys", ()):  # the user's --verbose true is kept
            config["verbose"] = False  # MetricsWriter prints one row per metric; Lightning's table repeats every
            # metric under each evaluation set's column (MultiNLI's matched / mismatched)
        trainer = config.trainer
        model_args = config.get("model", {}).get("init_args") or {}
        if model_args.get("model_name_or_path"):
            resolve_model_path(model_args["model_name_or_path"])  # one clear line now, not a jsonargparse report later
            check_model_config(config.get("model"), model_args["model_name_or_path"])
        check_config(config)
        check_allocation(trainer.num_nodes, trainer.devices, accelerator=trainer.accelerator)
        fill_save_dirs(trainer)
        pin_log_dir(trainer)
        evaluation_dirs(trainer, self.subcommand or "fit")

    def before_fit(self) -> None:
        for logger in self.trainer.loggers:
            if isinstance(logger, WandbRun):
                logger.log_config(self.config.get(self.subcommand))

    def after_fit(self) -> None:
        out_dir = run_dir(self.trainer)  # every rank: log_dir broadcasts
        if self.trainer.is_global_zero:
            saved = out_dir / "config.yaml"
            given = self.config.get(self.subcommand).get("config") or []
            config_path = str(saved) if saved.exists() else (str(given[-1]) if given else None)
            print(console.fit_summary(self.trainer, out_dir, config_path, self._started, self.model), flush=True)


def check_model_config(model_config, name: str) -> None:
    """The model kind against the module (before tokenisation, not in from_pretrained after it), with a model
    directory transformers cannot read named as the config field it is, not a traceback from AutoConfig."""
    from pathlib import Path

    from lit_lora.errors import IncompatibleConfig, InputError

    path = Path(resolve_model_path(name))
    if path.is_dir() and not (path / "config.json").is_file():
        raise IncompatibleConfig(f"model.init_args.model_name_or_path {name}: a directory without config.json, "
                                 "not a transformers model (a hub id or a saved model's directory)")
    try:
        check_model_kind(model_config)
    except (ValueError, OSError) as err:
        if isinstance(err, InputError):
            raise
        raise IncompatibleConfig(f"model.init_args.model_name_or_path {name}: its config.json cannot be read "
                                 f"({type(err).__name__}: {err})") from err


def main(argv: list[str]) -> None:
    """``lit-lora <fit|validate|test> …`` (``argv`` starts with the subcommand)."""
    LitLoraCLI(args=list(argv))
