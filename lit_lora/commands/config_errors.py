"""A config mistake named by file and line, on top of jsonargparse's message (which names neither).

    lit-lora fit --config my.yaml        # my.yaml has `max_lenght: 256` under data.init_args
    # error: my.yaml: line 31: 'max_lenght' is not an option of lit_lora.data.InstructionDataModule
    #        (did you mean 'max_length'?)
    #        … jsonargparse's own message follows
    # and for `batch_size: sixteen`: my.yaml: line 32: batch_size: expected int, got 'sixteen'
    # and for `max_stepz: 3` under trainer: my.yaml: line 9: 'trainer.max_stepz' is not an option of fit
    #        (did you mean 'trainer.max_steps'?)

``ShortUsageParser`` (``commands/train.py``) calls ``explain`` with the ``--config`` files of the command line.
``linked_values`` finds a value given for a key the CLI sets itself (``link_arguments``): jsonargparse drops it
without a word, so a ``--data.init_args.trust_remote_code true`` would do nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import inspect
import re
import typing
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from lit_lora.cli_links import LINKS
from lit_lora.commands.config_layers import DuplicateKeyError, canonical, every_key, same_class
from lit_lora.models.from_config import class_of

IN_CLASS = r"Problem with given class_path '([\w.]+)':\s*"
UNKNOWN_KEYS = (re.compile(IN_CLASS + r"Option '([\w.]+)' is not accepted"),             # a YAML key
                re.compile(IN_CLASS + r"unrecognized arguments: --([\w.]+)"),             # a command-line key
                re.compile(IN_CLASS + r"Group '(\w+)' does not accept option '(\w+)'"))  # a dataclass field
# a key outside a class's init_args, for fit / validate / test (a subcommand) and for merge, estimate, …
TOP_LEVEL_KEYS = (re.compile(r"Subcommand '(?P<command>\w+)' does not accept option '(?P<key>[\w.]+)'"),
                  re.compile(r"Group '(?P<group>\w+)' does not accept option '(?P<key>[\w.]+)'"),
                  re.compile(r"Option '(?P<key>[\w.]+)' is not accepted$"),
                  re.compile(r"unrecognized arguments: --(?P<key>[\w.]+)"))  # on the command line (argparse's)
BESIDE_CLASS_PATH = re.compile(IN_CLASS + r"Option 'class_path' is not accepted")
NOT_SETTINGS = ("class_path", "init_args", "dict_kwargs", "__path__")  # what a class's section holds beside them
NOT_KEYS = ("help", "config", "print_config")  # parser options that are not config keys
UNKNOWN_CLASS = re.compile(IN_CLASS + r"module '([\w.]+)' has no attribute '(\w+)'")
WRONG_TYPE = re.compile(r"Parser key \"([\w.]+)\":\s*Expected a (.+?)\. Got value: (.+)")
YAML_PROBLEM = '"<unicode string>"'
REQUIRED = re.compile(r"the following arguments are required: ([\w., ]+)")


def config_files(argv: Sequence[str]) -> list[str]:
    """The files ``--config`` / ``-c`` name in ``argv``, in order."""
    files = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            files.append(argv[i + 1])
        elif arg.startswith("--config="):
            files.append(arg.split("=", 1)[1])
    return files


def explain(message: str, files: Sequence[str], parser: Any = None) -> str:
    """``message`` with a first line naming the file and line of the mistake, where one of ``files`` holds it;
    ``parser``, the one that refused it, gives the keys a misspelled one is matched against."""
    found = yaml_error(files) if YAML_PROBLEM in message else empty_file(message, files) or \
        not_a_mapping(message, files) or missing_option(message, parser) or missing_section(message, files) or \
        settings_beside_class_path(message, files) or \
        unknown_option(message, files) or unknown_top_level(message, files, parser) or \
        unknown_class(message, files) or wrong_type(message, files)
    return f"{found}\n{message}" if found else message


def yaml_error(files: Sequence[str]) -> Optional[str]:
    """``file: line N, column M: invalid YAML (…)`` for the first of ``files`` that does not parse."""
    for path in files:
        try:
            yaml.safe_load(Path(path).read_text())
        except (OSError, UnicodeDecodeError):
            continue
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            return f"{path}{where}: invalid YAML ({getattr(err, 'problem', None) or err})"
    return None


def empty_file(message: str, files: Sequence[str]) -> Optional[str]:
    """``file: the config is empty …`` (jsonargparse: "Unexpected config: " and nothing after it)."""
    if "Unexpected config" not in message:
        return None
    empty = next((path for path in files if not "".join(read_lines(path)).strip()), None)
    return f"{empty}: the config is empty; start from a bundled one: lit-lora configs copy demo my.yaml" \
        if empty else None


def not_a_mapping(message: str, files: Sequence[str]) -> Optional[str]:
    """``file: not a config …`` for a file whose YAML is a word, a number or a list (jsonargparse: "Unexpected
    config: hello", naming no file)."""
    if "Unexpected config" not in message:
        return None
    for path in files:
        try:
            content = yaml.safe_load(Path(path).read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        if content is not None and not isinstance(content, dict):
            return f"{path}: not a config: its YAML is a {type(content).__name__}, not key: value settings " \
                   "(start from a bundled one: lit-lora configs copy demo my.yaml)"
    return None


def missing_option(message: str, parser: Any = None) -> Optional[str]:
    """``lit-lora merge: give --adapter_dir …`` for a command's own required option: not a config section, so the
    missing-section line below would send the user to the config file for it."""
    match = REQUIRED.search(message)
    keys = [key.strip() for key in match.group(1).split(",")] if match else []
    options = [key.split(".")[-1] for key in keys if key.split(".")[-1] not in ("model", "data")]
    if not options:
        return None
    prog = getattr(parser, "prog", "lit-lora")
    owner = re.search(r'Parser key "([\w.]+)"', message)  # a class's own argument (model.init_args.…)
    if owner:
        keys = [f"{owner.group(1)}.init_args.{o}" for o in options]
        return f"{prog}: {', '.join(keys)} is not set: give it under {owner.group(1)}: init_args: in the config, " \
               f"or as --{keys[0]}"
    return f"{prog}: give {', '.join('--' + o for o in options)} (`{prog} --help` says what it takes)"


def undecodable(files: Sequence[str]) -> Optional[str]:
    """``file: not a YAML text file …`` for a ``--config`` that is not UTF-8 text (a checkpoint, an archive):
    jsonargparse would fail on it with a ``UnicodeDecodeError`` traceback."""
    for path in files:
        try:
            Path(path).read_text()
        except UnicodeDecodeError:
            return f"{path}: not a YAML text file (a config is YAML: lit-lora configs copy demo my.yaml)"
        except OSError:
            continue
    return None


def missing_section(message: str, files: Sequence[str]) -> Optional[str]:
    """``my.yaml: no data: section …`` for a required section no config file (nor the command line) gives."""
    match = REQUIRED.search(message)
    if not match:
        return None
    sections = [key.strip().split(".")[-1] for key in match.group(1).split(",")]
    given = ", ".join(files) or "the command line"
    return f"{given}: no {', '.join(s + ':' for s in sections)} section; every experiment names its model: and " \
           "data: (e.g. lit-lora configs copy demo my.yaml)"


def unknown_option(message: str, files: Sequence[str]) -> Optional[str]:
    """``file: line N: 'key' is not an option of Class (did you mean …?)`` for a key a class (or one of its
    dataclass settings, such as a module's ``optim``) does not take."""
    match = next((m for pattern in UNKNOWN_KEYS for m in [pattern.search(message)] if m), None)
    if not match:
        return None
    class_path, *keys = match.groups()
    keys = ".".join(keys).split(".")
    key, owner, options = first_unknown(class_path, keys)
    where = in_class(files, class_path, ".".join(keys[:keys.index(key) + 1]) if key in keys else key)
    close = difflib.get_close_matches(key, options, n=1)
    return f"{where}{key!r} is not an option of {owner}" + (f" (did you mean {close[0]!r}?)" if close else "")


def first_unknown(class_path: str, keys: list[str]) -> tuple[str, str, list[str]]:
    """The first of ``keys`` (a dotted path under ``class_path``'s ``init_args``) that is not an option, what it
    was looked up in, and the options there: a dataclass-typed setting is followed into its fields."""
    owner, options, cls = class_path, init_options(class_path), class_of(class_path)
    for key in keys:
        if key not in options or cls is None:
            return key, owner, options
        annotation = init_annotations(cls).get(key)
        if not dataclasses.is_dataclass(annotation):
            break
        owner, cls = f"{owner} {key} ({annotation.__name__})", annotation
        options = [f.name for f in dataclasses.fields(annotation)]
    return keys[-1], owner, options


def in_class(files: Sequence[str], class_path: str, key: str) -> str:
    """``file: line N: `` of ``key`` (dotted, under ``init_args``) in a section of ``files`` whose ``class_path`` is
    ``class_path`` (that section may be in an earlier file): by its dotted path, not any key of that name."""
    lines = key_lines(files)
    sections = [k.removesuffix("class_path") for _, k, value, _ in lines
                if (k == "class_path" or k.endswith(".class_path")) and same_class(value, class_path)]
    wanted = {canonical(section + key) for section in sections}
    return next((f"{path}: line {n}: " for path, k, _, n in lines if canonical(k) in wanted), "")


def key_lines(files: Sequence[str]) -> list[tuple[str, str, Any, int]]:
    """``(file, dotted key, value, line)`` of every key in ``files`` (those that do not read as YAML are left out:
    jsonargparse names them)."""
    found = []
    for path in files:
        try:
            found += [(path, k, value, n) for k, (value, n) in every_key(path).items()]
        except (OSError, UnicodeDecodeError, DuplicateKeyError, yaml.YAMLError):
            continue
    return found


def unknown_top_level(message: str, files: Sequence[str], parser: Any = None) -> Optional[str]:
    """``file: line N: 'trainer.max_stepz' is not an option of fit (did you mean 'trainer.max_steps'?)`` for a key
    outside a class's ``init_args``: jsonargparse names the first value under it (``modle.init_args.…``), no file."""
    match = next((m for pattern in TOP_LEVEL_KEYS for m in [pattern.match(message)] if m), None)
    if not match:
        return None
    found = match.groupdict()
    command = found.get("command") or getattr(parser, "prog", "lit-lora").replace(" [options]", "").split()[-1]
    known = option_keys(parser)
    key = first_unknown_key(".".join(filter(None, (found.get("group"), found["key"]))), known)
    parent, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in known if k.rpartition(".")[0] == parent}
    close = difflib.get_close_matches(name, list(siblings), n=1)
    where = next((f"{path}: line {n}: " for path, k, _, n in key_lines(files) if k == key), "")
    return f"{where}{key!r} is not an option of {command}" + \
        (f" (did you mean {siblings[close[0]]!r}?)" if close else "")


def first_unknown_key(given: str, known: set[str]) -> str:
    """The section or key of ``given`` (``trainr.accelerator``) that is not in ``known``: ``trainr``, where the
    typo is (``given`` itself where nothing is known)."""
    parts = given.split(".")
    prefixes = (".".join(parts[:n]) for n in range(1, len(parts) + 1))
    return next((key for key in prefixes if key not in known), given) if known else given


def option_keys(parser: Any) -> set[str]:
    """The keys a config of ``parser`` may give, sections included (``trainer`` and ``trainer.max_steps``)."""
    keys = {a.dest for a in getattr(parser, "_actions", []) if isinstance(a.dest, str)
            and re.fullmatch(r"\w+(\.\w+)*", a.dest) and a.dest.rsplit(".")[-1] not in NOT_KEYS}
    return keys | {".".join(k.split(".")[:n]) for k in keys for n in range(1, k.count(".") + 1)}


def settings_beside_class_path(message: str, files: Sequence[str]) -> Optional[str]:
    """``file: line N: data: the settings of Class (batch_size) go under init_args: …`` for settings written beside
    ``class_path:``: jsonargparse then blames class_path itself, as an option of the class (or its base), no file."""
    match = BESIDE_CLASS_PATH.search(message)
    if not match:
        return None
    found = beside_class_path(files, match.group(1))
    if not found:  # given on the command line
        return "a class's settings go under init_args: beneath its class_path:, not beside it"
    section, class_path, beside = found
    names = [k.rpartition(".")[2] for _, k, _ in beside]
    options = init_options(class_path) if isinstance(class_path, str) else []
    unknown = [name for name in names if options and name not in options]
    close = difflib.get_close_matches(unknown[0], options, n=1) if unknown else []
    path, _, line = beside[0]
    return f"{path}: line {line}: {section}: the settings of {class_path} ({', '.join(names)}) go under init_args: " \
           "beneath class_path:, not beside it" + \
           (f"; {unknown[0]!r} is not an option of it either" if unknown else "") + \
           (f" (did you mean {close[0]!r}?)" if close else "")


def beside_class_path(files: Sequence[str], reported: str) -> Optional[tuple[str, Any, list[tuple[str, str, int]]]]:
    """``(section, its class_path, [(file, key, line) beside class_path])`` of the first section of ``files`` with
    keys beside its ``class_path:``, one naming ``reported`` or a subclass of it first."""
    lines, found = key_lines(files), []
    for path, key, value, _ in lines:
        section, _, name = key.rpartition(".")
        if name != "class_path" or not section:
            continue
        beside = [(p, k, n) for p, k, _, n in lines if p == path and k.rpartition(".")[0] == section
                  and k.rpartition(".")[2] not in NOT_SETTINGS]
        if beside:
            found.append((kind_of(value, reported), section, value, beside))
    return max(found, key=lambda f: f[0])[1:] if found else None  # the first of those that match, if any


def kind_of(class_path: Any, base: str) -> bool:
    """``class_path`` names ``base`` or a subclass of it (jsonargparse may name the base class)."""
    cls, base_cls = class_of(class_path) if isinstance(class_path, str) else None, class_of(base)
    return same_class(class_path, base) or (isinstance(cls, type) and isinstance(base_cls, type)
                                            and issubclass(cls, base_cls))


def unknown_class(message: str, files: Sequence[str]) -> Optional[str]:
    """``file: line N: class_path lit_lora.adapters.Lora: no such class (did you mean …LoRA?)``."""
    match = UNKNOWN_CLASS.search(message)
    if not match:
        return None
    class_path, module, name = match.groups()
    try:
        names = [n for n, v in vars(importlib.import_module(module)).items() if inspect.isclass(v)]
    except ImportError:
        names = []
    lowered = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lowered), n=1)
    lines = [(path, n) for path in files for n, line in enumerate(read_lines(path), 1) if class_path in line]
    where = next((f"{path}: line {n}: " for path, n in lines), "")
    hint = f" (did you mean {module}.{lowered[close[0]]}?)" if close else ""
    return f"{where}class_path {class_path}: {module} has no class {name}{hint}"


def wrong_type(message: str, files: Sequence[str]) -> Optional[str]:
    """``file: line N: key: expected <type>, got 'value'`` for a value of the wrong type, at the line that holds
    the key with that value (none for a value given on the command line)."""
    match = WRONG_TYPE.search(message)
    if not match:
        return None
    key, expected, value = match.group(1).rsplit(".", 1)[-1], match.group(2), match.group(3).strip()
    expected = re.sub(r"<class '([\w.]+)'>", r"\1", expected)
    lines = [(path, n) for path in files for n in lines_with_key(path, key) if value in line_text(path, n)]
    where = next((f"{path}: line {n}: " for path, n in lines), "")
    return f"{where}{key}: expected {expected}, got {value!r}"


def read_lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return []


def line_text(path: str, number: int) -> str:
    lines = read_lines(path)
    return lines[number - 1] if 0 < number <= len(lines) else ""


def lines_with_key(path: str, key: str) -> list[int]:
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return []
    pattern = re.compile(rf"^\s*{re.escape(key)}\s*:")
    return [n for n, line in enumerate(text.splitlines(), 1) if pattern.match(line)]


def init_options(class_path: str) -> list[str]:
    """The ``__init__`` arguments of ``class_path`` and its bases (what ``init_args`` may hold)."""
    return list(init_annotations(class_of(class_path))) if class_of(class_path) else []


def init_annotations(cls: type) -> dict[str, Any]:
    """``{argument: type}`` of ``cls.__init__`` and its bases' (``inspect.Parameter.empty`` where untyped)."""
    found: dict[str, Any] = {}
    for klass in inspect.getmro(cls):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # noqa: BLE001 - a forward reference that does not resolve: fall back to no types
            hints = {}
        for p in inspect.signature(init).parameters:
            if p not in ("self", "args", "kwargs"):
                found.setdefault(p, hints.get(p, inspect.Parameter.empty))
    return found


# keys the CLI sets from another (lit_lora/cli_links.py) -> where their value comes from
LINKED = {link.target: link.comes_from or link.source for link in LINKS}


def linked_values(argv: Sequence[str]) -> list[tuple[str, str]]:
    """``(key, where)`` for each place ``argv`` (a command line, with the ``--config`` files it names) sets a
    ``LINKED`` key: ``--key (command line)`` or ``file: line N``."""
    found = []
    for key in LINKED:
        group, _, name = key.partition(".init_args.")
        flags = (f"--{key}", f"--{group}.{name}")
        found += [(key, f"{flag} (command line)") for flag in flags for arg in argv
                  if arg == flag or arg.startswith(flag + "=")]
        for path in config_files(argv):
            try:
                config = yaml.safe_load(Path(path).read_text()) or {}
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            section = config.get(group) if isinstance(config, dict) else None
            if isinstance(section, dict) and (name in section or name in (section.get("init_args") or {})):
                lines = every_key(path)
                where = next((f": line {lines[k][1]}" for k in (f"{group}.init_args.{name}", f"{group}.{name}")
                              if k in lines), "")
                found.append((key, f"{path}{where}"))
    return found


def check_linked(argv: Sequence[str]) -> None:
    """Refuse a value for a key the CLI links from another one, naming where it was given and its source."""
    found = linked_values(argv)
    if found:
        given = "; ".join(f"{where}: {key}, which comes from {LINKED[key]}" for key, where in found)
        raise SystemExit(f"lit-lora: {given}. lit-lora sets it itself and would ignore this value: remove it")
