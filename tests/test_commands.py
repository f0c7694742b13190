"""The commands live in one place: one table (``lit_lora.commands.COMMANDS``) that ``lit-lora --help`` prints,
one way to read an experiment config (``lit_lora.commands.experiment``), and a library that never imports them.

    python -m pytest tests/test_commands.py

The import checks read the source with ``ast`` (nothing is imported): no module of ``lit_lora/`` outside
``lit_lora/commands/`` (and the ``lit_lora/cli.py`` shim) imports ``lit_lora.commands`` or ``lit_lora.cli``,
anywhere in the file, and the modules' top-level imports form no cycle.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
from pathlib import Path

import pytest

from harness import DEMO, entry_point, subprocess_env

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lit_lora"
COMMAND_NAMES = {"fit", "validate", "test", "compare", "estimate", "incontext", "merge", "sweep", "configs"}
EXPERIMENT_COMMANDS = ("compare", "estimate", "incontext", "merge")  # they read an experiment config, with their own options


# ---- the table ------------------------------------------------------------------------------------------------
def test_the_table_lists_every_command_and_each_module_has_main():
    from lit_lora.commands import COMMANDS

    assert set(COMMANDS) == COMMAND_NAMES
    for name, command in COMMANDS.items():
        assert command.help and "\n" not in command.help, name
        module = importlib.import_module(command.module)
        assert callable(getattr(module, "main", None)), f"{command.module} has no main()"
    assert {c.module for n, c in COMMANDS.items() if n in ("fit", "validate", "test")} == \
        {"lit_lora.commands.train"}


def test_help_and_no_arguments_list_the_commands(capsys):
    from lit_lora.commands import COMMANDS, main

    for args in ([], ["--help"], ["-h"]):
        main(args)
        out = capsys.readouterr().out
        for name, command in COMMANDS.items():
            assert f"  {name}" in out and command.help in out, (args, name)
    with pytest.raises(SystemExit) as stop:
        main(["no-such-command"])
    assert stop.value.code == 2 and "unknown command 'no-such-command'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["fitt"])
    assert "unknown command 'fitt' (did you mean 'fit'?)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:  # LightningCLI's predict: no module has a predict_step
        main(["predict", "--config", DEMO])
    assert stop.value.code == 2 and "lit-lora test --config" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["fit", "test", "estimate", "compare"])
def test_a_command_without_a_config_says_to_give_one(command, capsys):
    """Not jsonargparse's usage and "required: fit.data, fit.model"; a usage error's exit status, 2."""
    from lit_lora.commands import main

    with pytest.raises(SystemExit) as stop:
        main([command, "--trainer.max_steps", "2"])
    assert stop.value.code == 2
    assert capsys.readouterr().err.startswith(f"lit-lora {command}: give an experiment config: lit-lora {command} "
                                              "--config configs/demo.yaml")


def test_the_installed_entry_point_lists_the_commands():
    result = subprocess.run([entry_point(), "--help"], env=subprocess_env(), capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert all(f"  {name}" in result.stdout for name in COMMAND_NAMES)


def test_the_old_cli_module_is_the_same_entry_point():
    import lit_lora.cli as shim
    from lit_lora.commands import main
    from lit_lora.commands.train import LitLoraCLI

    assert shim.main is main and shim.LitLoraCLI is LitLoraCLI
    assert "Moved" in shim.__doc__


def test_verbose_is_taken_out_and_inherited(monkeypatch):
    from lit_lora import commands
    from lit_lora.verbosity import VERBOSE_ENV, verbose

    monkeypatch.delenv(VERBOSE_ENV, raising=False)
    # Lightning's own validate / test option keeps its value
    assert commands.take_verbose(["test", "--verbose", "false", "-c", "x.yaml"], from_sys_argv=False) == \
        ["test", "--verbose", "false", "-c", "x.yaml"]
    assert not verbose()
    assert commands.take_verbose(["fit", "--verbose", "--config", "x.yaml"], from_sys_argv=False) == \
        ["fit", "--config", "x.yaml"]
    assert verbose()
    for value, on in (("true", True), ("1", True), ("false", False), ("0", False), ("", False)):
        monkeypatch.setenv(VERBOSE_ENV, value)
        assert verbose() is on, value  # one reading of the switch: the logs' and the tracebacks'


# ---- one way to read an experiment config -----------------------------------------------------------------------
def test_experiment_commands_add_their_options_to_the_fit_parser():
    for name in EXPERIMENT_COMMANDS:
        tree = ast.parse((PACKAGE / "commands" / f"{name}.py").read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for alias in node.names}
        modules = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "argparse" not in imported, f"commands/{name}.py parses its own arguments"
        assert "lit_lora.commands.experiment" in modules and "load_experiment" in imported, name
        assert any(isinstance(n, ast.FunctionDef) and n.name == "add_arguments" for n in tree.body), name


@pytest.mark.parametrize("name", (*EXPERIMENT_COMMANDS, "fit", "validate", "test"))
def test_an_experiment_commands_help_starts_with_what_it_does(name, capsys):
    from lit_lora.commands import COMMANDS, main

    with pytest.raises(SystemExit):
        main([name, "--help"])
    out = capsys.readouterr().out
    assert f"lit-lora {name}: {COMMANDS[name].help}" in " ".join(out.split()) and "Lightning Trainer" not in out


def test_load_experiment_parses_a_commands_options_with_the_config():
    from lit_lora.commands.experiment import load_experiment, parse_experiment

    def add_arguments(parser):
        parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3])

    experiment = load_experiment(["--config", DEMO, "--shots", "0", "2", "--trainer.precision", "bf16-mixed",
                                  "--trainer.limit_test_batches", "2"], add_arguments, build="none")
    assert experiment.config.shots == [0, 2] and experiment.module is None
    assert experiment.eval_trainer_kwargs() == {"accelerator": "cpu", "devices": 1, "precision": "bf16-mixed",
                                                "limit_test_batches": 2}
    assert parse_experiment(["--config", DEMO]).model.class_path == "lit_lora.models.CausalLMModule"
    checked = []
    model_only = load_experiment(["--config", DEMO], check=checked.append, build="model")
    assert checked and model_only.module.model is None and model_only.datamodule is None  # no weights loaded


def cli_subclasses() -> list[tuple[str, ast.ClassDef]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(b).endswith("CLI") for b in node.bases):
                found.append((str(path.relative_to(ROOT)), node))
    return found


def test_no_command_overrides_private_lightning_cli_hooks():
    subclasses = cli_subclasses()
    assert {path for path, _ in subclasses} >= {"lit_lora/commands/train.py", "lit_lora/commands/experiment.py"}
    for path, cls in subclasses:
        private = [f.name for f in cls.body if isinstance(f, ast.FunctionDef) and f.name.startswith("_")
                   and f.name != "__init__"]
        assert private == [], f"{path}: {cls.name} overrides {private}"


# ---- the import graph -----------------------------------------------------------------------------------------
def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_modules(name: str, nodes) -> set[str]:
    """The lit_lora modules the import statements among ``nodes`` import (``from pkg import submodule``: the
    submodule; relative imports resolved)."""
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m == "lit_lora" or m.startswith("lit_lora.")}


def top_level_nodes(tree: ast.Module):
    """The statements that run at import time (``if TYPE_CHECKING:`` blocks excluded), not function bodies."""
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            stack.extend(getattr(node, "body", []) + getattr(node, "orelse", []) + getattr(node, "finalbody", []))
            for handler in getattr(node, "handlers", []):
                stack.extend(handler.body)


def test_no_library_module_imports_the_commands():
    allowed = {"lit_lora.cli"} | {m for m in MODULES if m == "lit_lora.commands" or m.startswith("lit_lora.commands.")}
    offenders = {}
    for name, path in MODULES.items():
        if name in allowed:
            continue
        imports = imported_modules(name, ast.walk(ast.parse(path.read_text())))  # function bodies included
        bad = sorted(m for m in imports if m in ("lit_lora.cli", "lit_lora.commands")
                     or m.startswith(("lit_lora.commands.", "lit_lora.cli.")))
        if bad:
            offenders[name] = bad
    assert offenders == {}


def test_top_level_imports_form_no_cycle():
    graph = {name: sorted(m for m in imported_modules(name, top_level_nodes(ast.parse(path.read_text())))
                          if m in MODULES and m != name)
             for name, path in MODULES.items()}
    state: dict[str, int] = {}  # 1: on the DFS path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in graph[name]:
            if state.get(child) == 1:
                cycle = path[path.index(child):] + [child]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if child not in state:
                visit(child, path + [child])
        state[name] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])


def test_a_mistyped_option_is_a_short_answer_not_every_option(capsys):
    from lit_lora.commands import main

    with pytest.raises(SystemExit) as stop:
        main(["fit", "--config", DEMO, "--trainer.max_stepz", "3"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) <= 5, err
    assert " fit --config FILE [" in err[0] and err[-2:] == [
        "error: 'trainer.max_stepz' is not an option of fit (did you mean 'trainer.max_steps'?)",
        "unrecognized arguments: --trainer.max_stepz 3"], err
    with pytest.raises(SystemExit):  # a prefix of an option is a mistake too, not that option (argparse's abbrev)
        main(["fit", "--config", DEMO, "--trainer.max_ste", "3", "--print_config"])
    err = capsys.readouterr()
    assert "unrecognized arguments: --trainer.max_ste 3" in err.err and "max_steps: 3" not in err.out, err


def test_merge_refuses_a_method_without_mergeable_weights_and_a_directory_without_an_adapter(tmp_path):
    from lit_lora.commands import main
    from lit_lora.compatibility import IncompatibleConfig

    with pytest.raises(IncompatibleConfig, match="needs a LoRA / QLoRA config, not full"):
        main(["merge", "--config", DEMO, "--model.init_args.adapter", "lit_lora.adapters.FullFineTuning",
              "--adapter_dir", str(tmp_path)])
    with pytest.raises(IncompatibleConfig, match="no adapter_config.json"):
        main(["merge", "--config", DEMO, "--adapter_dir", str(tmp_path)])


def test_a_fragment_copied_by_its_short_name_is_said_to_go_after_a_whole_config(tmp_path, capsys):
    """``configs copy wandb`` copies loggers/wandb.yaml: the hint is a fragment's, not a whole config's."""
    from lit_lora.commands import main

    for name in ("wandb", "ddp", "strategies/ddp"):
        main(["configs", "copy", name, f"{tmp_path}/", "--force"])
        copy = tmp_path / f"{name.rsplit('/', 1)[-1]}.yaml"
        assert capsys.readouterr().out == (
            f"[lit-lora] copied {name} to {copy}; run it with: lit-lora fit --config <experiment>.yaml --config "
            f"{copy}   (a fragment: it goes after a whole config)\n")
