"""What the ``--config`` files and ``--key value`` pairs of one command line do to each other, said before
jsonargparse merges them.

jsonargparse reads YAML with the last of a repeated key winning, and applies a command line in order, a later
``--config`` file or ``--key value`` winning: both silent. lit-lora refuses the first and names the second::

    lit-lora fit --config my.yaml                 # my.yaml gives `trainer:` twice
    # lit-lora: my.yaml: line 40: key 'trainer' given twice in one mapping (first at line 3); jsonargparse
    #           would keep only the second, dropping the first's settings: give each key once
    lit-lora fit --config configs/nli/llama3_8b_qlora_classifier_multinli.yaml \\
                 --config configs/strategies/deepspeed_zero2.yaml
    # [lit-lora] configs/strategies/deepspeed_zero2.yaml: line 7 sets trainer.precision to bf16-mixed
    #            (configs/nli/llama3_8b_qlora_classifier_multinli.yaml: line 12 gave 16-mixed)
    lit-lora fit --config configs/demo.yaml --trainer.max_steps 2 --config more.yaml
    # [lit-lora] more.yaml: line 2 sets trainer.max_steps to 7 (the command line gave --trainer.max_steps 2)

A file that puts a section where a value was (``strategy: ddp``, then a DeepSpeed ``strategy:`` section) or a
value where a section was is named too. A ``--key value`` is meant to override what comes before it: not reported.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import yaml
from jsonargparse import get_loader

from lit_lora.cli_links import canonical

log = logging.getLogger("lit_lora")
KEY = re.compile(r"[A-Za-z_][\w.]*")


class DuplicateKeyError(ValueError):
    """A mapping of a config file gives one key twice."""


def leaves(path: str) -> dict[str, tuple[Any, int]]:
    """``{dotted key: (value, line)}`` of every scalar or list of the YAML file ``path`` (lines from 1).

    Raises ``DuplicateKeyError`` naming the file and both lines when one mapping repeats a key."""
    return {key: (_value(node), line) for key, node, line in _keys(path) if not isinstance(node, yaml.MappingNode)}


def every_key(path: str) -> dict[str, tuple[Any, int]]:
    """``{dotted key: (value, line)}`` as ``leaves``, with sections (value None) and keys inside lists
    (``trainer.callbacks.0.class_path``): where a message about a key points."""
    return {key: (None if isinstance(node, yaml.MappingNode) else _value(node), line)
            for key, node, line in _keys(path, lists=True)}


def _keys(path: str, lists: bool = False) -> Iterator[tuple[str, yaml.Node, int]]:
    text = Path(path).read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    return _walk(path, root, "", 0, lists) if root is not None else iter(())


def _walk(path: str, node: yaml.Node, prefix: str, line: int, lists: bool) -> Iterator[tuple[str, yaml.Node, int]]:
    """``(dotted key, value node, line of the key)`` of every key under ``node``; inside lists with ``lists``."""
    if prefix:
        yield prefix, node, line
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            inside = _walk(path, item, f"{prefix}.{i}" if prefix else str(i), item.start_mark.line + 1, lists)
            for found in inside:  # read in any case: a repeated key inside a list item (a callback's init_args)
                if lists:
                    yield found
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key, line = str(_value(key_node)), key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKeyError(
                f"{path}: line {line}: key {key!r} given twice in one mapping (first at line {seen[key]}); "
                f"jsonargparse would keep only the second, dropping the first's settings: give each key once")
        seen[key] = line
        yield from _walk(path, value_node, f"{prefix}.{key}" if prefix else key, line, lists)


def _value(node: yaml.Node) -> Any:
    """The Python value of one YAML node, as jsonargparse reads it (``1e-4`` a float, as ``0.0001``)."""
    return read_value(yaml.serialize(node)) if node is not None else None


def read_value(text: str) -> Any:
    """``text`` as jsonargparse reads a value (its own YAML loader); text that is not YAML, as it is."""
    try:
        return get_loader("yaml")(text)
    except yaml.YAMLError:
        return text


@dataclasses.dataclass(frozen=True)
class Given:
    """One value a layer gives: at a line of a file, or on the command line (``path`` None) as ``typed``."""

    key: str
    value: Any
    path: Optional[str] = None
    line: int = 0
    typed: str = ""

    def gave(self, same_key: bool) -> str:
        """``file: line N gave VALUE`` (``KEY: VALUE`` for another key), or ``the command line gave --key value``."""
        if self.path is None:
            return f"the command line gave {self.typed}"
        return f"{self.path}: line {self.line} gave {'' if same_key else self.key + ': '}{_shown(self.value)}"


Layer = dict[str, Given]  # canonical key -> what one --config file or --key value gives it


def layers(argv: Sequence[str]) -> Iterator[Layer]:
    """What each ``--config`` file and each ``--key value`` of ``argv`` gives, in the order jsonargparse applies
    them. A file that cannot be read or is not YAML is left out (jsonargparse names it); one that repeats a key
    raises ``DuplicateKeyError``."""
    i = 0
    while i < len(argv):
        flag, eq, text = argv[i].partition("=")
        takes_next = not eq and i + 1 < len(argv) and not argv[i + 1].startswith("--")
        text = argv[i + 1] if takes_next else text
        i += 2 if takes_next else 1
        if not (eq or takes_next):
            continue
        if flag in ("--config", "-c"):
            try:
                found = leaves(text)
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            yield {canonical(key): Given(key, value, text, line) for key, (value, line) in found.items()
                   if not (key.endswith("init_args") and value is None)}  # an empty `init_args:` gives nothing
        elif flag.startswith("--") and KEY.fullmatch(flag[2:]):
            yield _argument(flag[2:], text)


def _argument(key: str, text: str) -> Layer:
    """What ``--key text`` gives, read as jsonargparse reads it (YAML; a mapping gives each of its keys)."""
    value = read_value(text)
    typed = f"--{key} {text}" if len(text) <= 60 else f"--{key} {text[:57]}..."

    def flat(key: str, value: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(value, dict) and value:
            for sub, item in value.items():
                yield from flat(f"{key}.{sub}", item)
        else:
            yield key, value

    return {canonical(k): Given(k, v, typed=typed) for k, v in flat(key, value)}


def overrides(argv: Sequence[str]) -> list[str]:
    """One line for each value a ``--config`` file of ``argv`` gives over another one an earlier file or
    ``--key value`` gave (see the module doc)."""
    return _notes(layers(argv))


def _notes(given: Iterable[Layer]) -> list[str]:
    """Apply ``given`` in order as jsonargparse does, keeping who gave each value, and say what each file replaces."""
    notes: list[str] = []
    earlier: Layer = {}
    for layer in given:
        said = []
        for key, new in layer.items():
            if key in earlier and earlier[key].value != new.value:
                said.append((new, earlier[key], True))
        for prefix in {p for key in layer for p in _prefixes(key) if p in earlier}:  # a section over a value
            new = _replacing(earlier[prefix], prefix, {k: g for k, g in layer.items() if k.startswith(prefix + ".")})
            said += [(new, earlier[prefix], False)] if new is not None else []
            del earlier[prefix]
        for key, new in layer.items():  # a value over a section
            section = {k: g for k, g in earlier.items() if k.startswith(key + ".")}
            class_path = section.get(key + ".class_path")
            if section and not (class_path is not None and same_class(new.value, class_path.value)):
                said.append((new, class_path or next(iter(section.values())), False))
                earlier = {k: g for k, g in earlier.items() if k not in section}
        notes += [f"[lit-lora] {new.path}: line {new.line} sets {new.key} to {_shown(new.value)} ({old.gave(same)})"
                  for new, old, same in sorted(said, key=lambda s: s[0].line)
                  if new.path is not None]  # a --key value is meant to override
        earlier.update(layer)
    return notes


def _prefixes(key: str) -> Iterator[str]:
    parts = key.split(".")
    return (".".join(parts[:n]) for n in range(1, len(parts)))


def _replacing(old: Given, prefix: str, section: Layer) -> Optional[Given]:
    """The value of a later ``section`` that replaces ``old``, given for ``prefix`` itself; None where it does not:
    the class ``old`` names again, or settings for that class (``--model X``, then ``model: init_args: …``)."""
    class_path = section.get(prefix + ".class_path")
    if class_path is not None:
        return None if same_class(old.value, class_path.value) else class_path
    return None if old.value is None or isinstance(old.value, str) else next(iter(section.values()))


def same_class(a: Any, b: Any) -> bool:
    """``lit_lora.adapters.LoRA`` and ``LoRA`` name one class."""
    return isinstance(a, str) and isinstance(b, str) and (a == b or a.endswith("." + b) or b.endswith("." + a))


def _shown(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def check_layers(argv: Sequence[str]) -> set[str]:
    """Refuse a config file that repeats a key; log the values a later ``--config`` overrides (rank zero only).
    The keys ``argv`` gives, by ``canonical`` name (files that are missing or not YAML are left to jsonargparse,
    which names them)."""
    if not isinstance(argv, (list, tuple)):  # LightningCLI's args= may be a dict: no command line to read
        return set()
    try:
        given = list(layers(argv))
    except DuplicateKeyError as err:
        raise SystemExit(f"lit-lora: {err}") from None
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        for note in _notes(given):
            log.info(note)
    return {key for layer in given for key in layer}
