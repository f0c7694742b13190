"""Every ``lit-lora`` command, in one table (``COMMANDS``): its module and its one-line help.

    lit-lora                                  # the commands and what each does (also: lit-lora --help)
    lit-lora fit --config configs/demo.yaml   # train (fit / validate / test: lit_lora.commands.train)
    lit-lora estimate --config configs/code/gemma2b_qlora_python_codes.yaml --gpu_memory_gib 24
    lit-lora fit --config configs/demo.yaml --verbose   # --verbose anywhere keeps every library message

    >>> from lit_lora.commands import COMMANDS
    >>> COMMANDS["estimate"].module
    'lit_lora.commands.estimate'

A command module holds argument parsing and orchestration only and has ``main(argv)``; what it runs lives in
the library (``lit_lora.evaluation``, ``lit_lora.estimate``, ``lit_lora.sweep`` …), which never imports this
package. Every command that reads an experiment config reads it with ``lit_lora.commands.experiment``.
"""

from __future__ import annotations

import difflib
import importlib
import logging
import os
import signal
import sys
import threading
import warnings
from dataclasses import dataclass
from typing import Optional

from lit_lora.verbosity import VERBOSE_ENV, InfoFromRankZero, verbose


@dataclass(frozen=True)
class Command:
    """One ``lit-lora`` command: the module whose ``main(argv)`` runs it, and its help line.

    ``with_name``: ``main`` gets the command name as ``argv[0]`` (the LightningCLI subcommands)."""

    module: str
    help: str
    with_name: bool = False


TRAIN = "lit_lora.commands.train"
COMMANDS: dict[str, Command] = {
    "fit": Command(TRAIN, "train with a config: --config FILE, --model.… / --data.… / --trainer.… overrides",
                   with_name=True),
    "validate": Command(TRAIN, "the validation loop of a config (--ckpt_path: a trained checkpoint)", with_name=True),
    "test": Command(TRAIN, "the test loop of a config; writes metrics.json (--ckpt_path: a trained checkpoint)",
                    with_name=True),
    "compare": Command("lit_lora.commands.compare", "the base and the fine-tuned model on one split: a report"),
    "estimate": Command("lit_lora.commands.estimate",
                        "parameters and GPU memory of a config, from the architecture alone (no weights)"),
    "merge": Command("lit_lora.commands.merge", "fold a trained LoRA / QLoRA adapter into its base: a plain model"),
    "incontext": Command("lit_lora.commands.incontext", "zero- / k-shot prompting of a config's data, no training"),
    "sweep": Command("lit_lora.commands.sweep",
                     "a grid of settings / seeds, one run per point (local or one SLURM array); `sweep report`"),
    "configs": Command("lit_lora.commands.configs", "the bundled configs: `configs list`, `configs copy NAME`"),
}
# commands a LightningCLI user may expect, and what lit-lora does instead
NOT_COMMANDS = {
    "predict": "no lit-lora datamodule has a prediction set without references, and no module a predict_step: "
               "`lit-lora test --config … --ckpt_path …` writes predictions.jsonl (prompt, reference, prediction) "
               "for the evaluation rows, and `lit-lora compare` the base model's beside them",
}


def usage() -> str:
    """``lit-lora``'s own help: the commands and their help lines."""
    width = max(map(len, COMMANDS))
    lines = ["usage: lit-lora <command> [--help] [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {command.help}" for name, command in COMMANDS.items()]
    lines += ["", "`lit-lora <command> --help` lists a command's options; --verbose keeps every library message."]
    return "\n".join(lines)


def configure_logging() -> None:
    """``lit_lora`` log records at INFO to stderr, as bare messages; info from rank 0 only."""
    logger = logging.getLogger("lit_lora")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(InfoFromRankZero())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


BOOLEANS = ("true", "false", "yes", "no", "1", "0", "on", "off")


def take_verbose(argv: list[str], from_sys_argv: bool) -> list[str]:
    """``argv`` without lit-lora's ``--verbose``; when given, ``LIT_LORA_VERBOSE=1`` (other ranks inherit it).
    ``--verbose true|false`` is left to the command: Lightning's ``validate`` / ``test`` option of that name."""
    ours = [i for i, arg in enumerate(argv) if arg == "--verbose"
            and not (i + 1 < len(argv) and argv[i + 1].lower() in BOOLEANS)]
    if not ours:
        return argv
    os.environ[VERBOSE_ENV] = "1"
    rest = [arg for i, arg in enumerate(argv) if i not in ours]
    if from_sys_argv:
        sys.argv[1:] = rest
    return rest


def main(args: Optional[list[str]] = None) -> None:
    """``lit-lora <command> …``: the command's ``main`` with the arguments after the command name."""
    argv = take_verbose(sys.argv[1:] if args is None else list(args), from_sys_argv=args is None)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    command = COMMANDS.get(argv[0])
    if argv[0] in NOT_COMMANDS:
        print(f"lit-lora {argv[0]}: not a lit-lora command: {NOT_COMMANDS[argv[0]]}", file=sys.stderr)
        raise SystemExit(2)
    if command is None:
        close = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        print(f"lit-lora: unknown command {argv[0]!r}{hint}\n\n{usage()}", file=sys.stderr)
        raise SystemExit(2)
    if needs_config(argv):  # a usage error: exit status 2, as argparse's
        print(f"lit-lora {argv[0]}: give an experiment config: lit-lora {argv[0]} --config configs/demo.yaml "
              "(`lit-lora configs list` shows the bundled ones)", file=sys.stderr)
        raise SystemExit(2)
    from lit_lora import console

    configure_logging()
    console.quiet_libraries()
    # given argv as the command line would be, LightningCLI would warn that args= is for use from Python
    warnings.filterwarnings("ignore", message=".*args parameter is intended")
    importlib.import_module(command.module).main(argv if command.with_name else argv[1:])


def needs_config(argv: list[str]) -> bool:
    """A command that reads an experiment config, given neither ``--config`` nor any ``--model`` / ``--data``
    setting nor ``--help`` (jsonargparse would answer with its usage and "required: fit.data, fit.model")."""
    if argv[0] in ("sweep", "configs") or len(argv) > 1 and argv[1] in ("-h", "--help"):
        return False
    return not any(arg == "-c" or arg.startswith(("--config", "--model", "--data", "-h", "--help", "--print_config"))
                   for arg in argv[1:])


def input_error_types() -> tuple[type, ...]:
    """The errors that say what is wrong with a run's input (data file and line, config key, run directory,
    checkpoint, allocation, a Trainer setting Lightning refuses such as a GPU accelerator on a machine
    without one) or why it stopped (a non-finite loss): their message is the whole answer. lit-lora's own
    derive from ``lit_lora.errors.InputError``."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from lit_lora.errors import InputError

    return (InputError, MisconfigurationException)


def input_error_in(err: BaseException) -> Optional[BaseException]:
    """``err`` if it is an input error, else the input error it was raised ``from``: jsonargparse wraps an error
    raised while it builds a class (a datamodule's setting out of range) in its own "Does not validate". Only
    explicit causes are followed: a bug raised while handling an input error keeps its traceback."""
    types, seen = input_error_types(), set()
    while err is not None and id(err) not in seen:
        if isinstance(err, types):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def entry() -> None:
    """The ``lit-lora`` command (and ``python -m lit_lora.commands``): ``main``, with an input error printed as
    one line, ``lit-lora: <Error>: <message>``, and exit status 1; ``--verbose`` keeps its traceback. ``main``
    itself raises, for callers in Python."""
    if [a for a in sys.argv[1:] if a != "--verbose"][:1] == ["fit"]:  # under SLURM: a signal during the imports
        # is kept for the preemption callback, not fatal
        from lit_lora.cluster import early_signals

        early_signals.record()
    ctrl_c = CtrlC()
    try:
        main()
        close_process_group()
    except KeyboardInterrupt:
        if verbose():
            raise
        interrupted()
    except SystemExit:
        if ctrl_c.seen and not verbose():  # Lightning's graceful shutdown after Ctrl-C ends in sys.exit(1)
            interrupted()
        raise
    except Exception as err:  # noqa: BLE001 - only the input errors are caught; anything else is re-raised
        cause = input_error_in(err)
        if verbose() or cause is None:
            raise
        named = "" if type(cause).__name__ == "ModelNotFoundError" else f"{type(cause).__name__}: "  # says it all
        sys.exit(f"lit-lora: {named}{cause}")
    finally:
        ctrl_c.restore()
        if "lit_lora.cluster.early_signals" in sys.modules:  # a signal kept for a run that never took it
            sys.modules["lit_lora.cluster.early_signals"].release()


INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C


def interrupted() -> None:
    """Ctrl-C ends every command the same way: one line and exit status 130, not a traceback from wherever the
    imports or the run were, nor Lightning's exit status 1 after its graceful shutdown."""
    print(f"lit-lora: interrupted (Ctrl-C); exit status {INTERRUPTED}", file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED) from None


class CtrlC:
    """Notes a Ctrl-C (``seen``) and raises ``KeyboardInterrupt`` as Python's own handler does, so that a
    ``SystemExit`` on the way out of an interrupted run is told from a command's own exit."""

    def __init__(self):
        self.seen = False
        self.previous = signal.getsignal(signal.SIGINT)
        # an ignored SIGINT (a job started in the background) stays ignored; signals belong to the main thread
        if self.previous is signal.default_int_handler and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.interrupt)

    def interrupt(self, signum, frame) -> None:
        self.seen = True
        raise KeyboardInterrupt

    def restore(self) -> None:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) == self.interrupt:
            signal.signal(signal.SIGINT, self.previous)


def close_process_group() -> None:
    """Leave a finished multi-process run's process group before the interpreter exits: gloo's threads, left
    running, can abort the exit ("terminate called without an active exception") after the work is done."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
