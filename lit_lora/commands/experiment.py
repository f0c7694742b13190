"""The one way a command reads an experiment config: the ``lit-lora fit`` parser (``LitLoraCLI``), ``run=False``.

    from lit_lora.commands.experiment import load_experiment, parse_experiment
    experiment = load_experiment(["--config", "configs/demo.yaml"])   # module and datamodule built, nothing run
    experiment.module, experiment.datamodule, experiment.eval_trainer_kwargs()
    config = parse_experiment(["--config", "configs/demo.yaml"])      # the parsed config only, nothing built

Any ``--config`` fragment and ``--model.…`` / ``--data.…`` / ``--trainer.…`` override works as in ``fit``. A
command's own options are added to that same jsonargparse parser by an ``add_arguments(parser)`` function and
come back in ``experiment.config``; ``check(config)`` refuses bad combinations before anything is built:

    def add_arguments(parser):
        parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3], help="k of each k-shot run")

    experiment = load_experiment(["--config", "configs/demo.yaml", "--shots", "0", "1"], add_arguments)
    experiment.config.shots   # [0, 1]

``build``: ``"all"`` (the CLI's checks, then module and datamodule, as ``fit`` builds them), ``"model"`` (only
the module, which loads no weights, with the label names the CLI would link from the datamodule class; no
hardware checks: ``estimate`` runs on any machine) or ``"none"`` (the parsed config alone).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

from lit_lora.commands.train import LitLoraCLI

Build = Literal["all", "model", "none"]


@dataclass
class Experiment:
    """A parsed experiment config (a command's own options included) and what was built from it."""

    config: Any                 # jsonargparse Namespace
    module: Any = None          # the LightningModule (build "all" or "model")
    datamodule: Any = None      # the LightningDataModule (build "all")

    def eval_trainer_kwargs(self) -> dict:
        """One device of the config's accelerator at its precision, and its ``limit_test_batches`` (a smoke
        run's row limit, the same for base and fine-tuned): the Trainer of an evaluation-only run."""
        trainer = self.config.get("trainer") or {}
        kwargs = {"accelerator": trainer.get("accelerator") or "auto", "devices": 1,
                  "precision": trainer.get("precision"), "limit_test_batches": trainer.get("limit_test_batches")}
        return {k: v for k, v in kwargs.items() if v is not None}


def load_experiment(argv: list[str], add_arguments: Optional[Callable[[Any], None]] = None,
                    check: Optional[Callable[[Any], None]] = None, build: Build = "all",
                    prog: Optional[str] = None) -> Experiment:
    """The experiment of ``lit-lora fit <argv>`` plus a command's options (see the module doc); ``prog``: the
    command line ``--help`` shows (e.g. ``lit-lora compare``)."""
    if build not in ("all", "model", "none"):
        raise ValueError(f"build must be 'all', 'model' or 'none', not {build!r}")

    class ExperimentCLI(LitLoraCLI):
        def add_arguments_to_parser(self, parser) -> None:
            super().add_arguments_to_parser(parser)
            if add_arguments is not None:
                add_arguments(parser)
            self.fit_only = accept_fit_arguments(parser)

        def before_instantiate_classes(self) -> None:
            refuse_fit_arguments(self.config, self.fit_only, prog or "lit-lora")
            if check is not None:
                check(self.config)
            if build == "all":  # model path, compatibility, SLURM allocation: for the machine that runs it
                super().before_instantiate_classes()

        def instantiate_classes(self) -> None:
            if build == "all":
                super().instantiate_classes()

    with warnings.catch_warnings():  # LightningCLI warns when args= is given next to a command line
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        cli = ExperimentCLI(args=list(argv), run=False, save_config_callback=None, parser_kwargs=parser_text(prog))
    if build == "all":
        return Experiment(cli.config, cli.model, cli.datamodule)
    if build == "model":
        return Experiment(cli.config, model_of(cli.config))
    return Experiment(cli.config)


def parser_text(prog: Optional[str]) -> Optional[dict]:
    """``prog`` and, for a ``lit-lora <command>``, its help line as the description ``--help`` starts with
    (instead of LightningCLI's "Lightning Trainer command line tool")."""
    if not prog:
        return None
    from lit_lora.commands import COMMANDS

    command = COMMANDS.get(prog.removeprefix("lit-lora ").strip())
    return {"prog": prog, **({"description": f"{prog}: {command.help}"} if command else {})}


# ``Trainer.fit``'s own arguments: the config.yaml a ``lit-lora fit`` run saves holds them (``ckpt_path: null``)
FIT_ARGUMENTS = {"ckpt_path": Optional[str], "weights_only": Optional[bool]}


def accept_fit_arguments(parser) -> list[str]:
    """Let a run's saved config.yaml through: add the ``FIT_ARGUMENTS`` the command did not add itself; their names."""
    added = [name for name in FIT_ARGUMENTS if not _has_key(parser, name)]
    for name in added:
        parser.add_argument(f"--{name}", type=FIT_ARGUMENTS[name], default=None,
                            help=f"fit's {name}, accepted from a run's saved config.yaml; this command does not use it")
    return added


def _has_key(parser, key: str) -> bool:
    try:
        parser.get_default(key)
    except KeyError:  # jsonargparse: "No action for key"
        return False
    return True


def refuse_fit_arguments(config, names: list[str], prog: str) -> None:
    """A ``--ckpt_path`` given to a command that does not use one is an error, not a silent no-op."""
    if "ckpt_path" in names and config.get("ckpt_path") is not None:
        raise SystemExit(f"{prog}: this command does not use --ckpt_path ({config.get('ckpt_path')}); "
                         "it is fit's, validate's and test's")


def parse_experiment(argv: list[str], add_arguments: Optional[Callable[[Any], None]] = None) -> Any:
    """The parsed (not instantiated) config of ``lit-lora fit <argv>``."""
    return load_experiment(argv, add_arguments, build="none").config


def model_of(config: Any) -> Any:
    """The config's module alone, with the label names ``LitLoraCLI`` links from the datamodule at instantiation."""
    from lit_lora.models.from_config import link_label_names, module_from_config

    module = module_from_config(config.model)
    data = config.get("data")
    link_label_names(module, data.class_path if data is not None else None)
    return module


class _Writes(io.TextIOBase):
    """A stdout that keeps each ``write`` apart: jsonargparse prints the config in one write, right before it
    exits, while imports during parsing (DeepSpeed's accelerator detection) may log lines to stdout first."""

    def __init__(self):
        self.writes: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.writes.append(text)
        return len(text)


class ConfigError(ValueError):
    """``lit-lora fit`` refuses these arguments; the message is the parser's error."""


def print_config(args: list[str]) -> str:
    """What ``lit-lora fit <args> --print_config`` prints, run in this process (nothing is built); a refused
    argument raises ``ConfigError`` with the parser's message."""
    out, err = _Writes(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        try:
            LitLoraCLI(args=["fit", *args, "--print_config"])
        except SystemExit as stop:
            code = stop.code or 0
    printed = next((w for w in reversed(out.writes) if w.strip()), "")
    if code != 0 or not printed:
        if isinstance(code, str):  # a refusal that is its own message (commands/config_errors.check_linked)
            raise ConfigError(code)
        text = err.getvalue()
        message = text[text.rfind("error:"):] if "error:" in text else text[-2000:]
        raise ConfigError(message.strip() or f"exit status {code}")
    return printed
