"""What the ``--config`` files of one command line do to each other, said before jsonargparse merges them.

jsonargparse reads YAML with the last of a repeated key winning, and merges ``--config`` files in order with
the later one winning: both silent. lit-lora refuses the first and names the second::

    lit-lora fit --config my.yaml                 # my.yaml gives `trainer:` twice
    # lit-lora: my.yaml: line 40: key 'trainer' given twice in one mapping (first at line 3); jsonargparse
    #           would keep only the second, dropping the first's settings: give each key once
    lit-lora fit --config configs/nli/llama3_8b_qlora_classifier_multinli.yaml \\
                 --config configs/strategies/deepspeed_zero2.yaml
    # [lit-lora] configs/strategies/deepspeed_zero2.yaml: line 7 sets trainer.precision to bf16-mixed
    #            (configs/nli/llama3_8b_qlora_classifier_multinli.yaml: line 12 gave 16-mixed)

A value given on the command line is meant to override and is not reported.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

log = logging.getLogger("lit_lora")


class DuplicateKeyError(ValueError):
    """A mapping of a config file gives one key twice."""


def leaves(path: str) -> dict[str, tuple[Any, int]]:
    """``{dotted key: (value, line)}`` of every scalar or list of the YAML file ``path`` (lines from 1).

    Raises ``DuplicateKeyError`` naming the file and both lines when one mapping repeats a key."""
    text = Path(path).read_text(encoding="utf-8")
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    return dict(_walk(path, root, "")) if root is not None else {}


def _walk(path: str, node: yaml.Node, prefix: str) -> Iterator[tuple[str, tuple[Any, int]]]:
    if not isinstance(node, yaml.MappingNode):
        for item in node.value if isinstance(node, yaml.SequenceNode) else ():
            for _ in _walk(path, item, ""):  # a repeated key inside a list item (a callback's init_args)
                pass
        if prefix:
            yield prefix, (_value(node), node.start_mark.line + 1)
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        key, line = str(_value(key_node)), key_node.start_mark.line + 1
        if key in seen:
            raise DuplicateKeyError(
                f"{path}: line {line}: key {key!r} given twice in one mapping (first at line {seen[key]}); "
                f"jsonargparse would keep only the second, dropping the first's settings: give each key once")
        seen[key] = line
        yield from _walk(path, value_node, f"{prefix}.{key}" if prefix else key)


def _value(node: yaml.Node) -> Any:
    """The Python value of one YAML node, as ``yaml.safe_load`` builds it."""
    return yaml.SafeLoader(yaml.serialize(node)).get_single_data() if node is not None else None


def overrides(files: Sequence[str]) -> list[str]:
    """One line for each key a later file of ``files`` sets to another value than an earlier one did."""
    notes, earlier = [], {}
    for path in files:
        for key, (value, line) in leaves(path).items():
            if key in earlier and earlier[key][0] != value:
                old, old_path, old_line = earlier[key]
                notes.append(f"[lit-lora] {path}: line {line} sets {key} to {_shown(value)} "
                             f"({old_path}: line {old_line} gave {_shown(old)})")
            earlier[key] = (value, path, line)
    return notes


def _shown(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()
    return text if len(text) <= 80 else text[:77] + "..."


def check_config_files(files: Sequence[str]) -> None:
    """Refuse a config file that repeats a key; log the keys a later ``--config`` overrides (rank zero only).
    Files that are missing or not YAML are left to jsonargparse, which names them."""
    readable = []
    for path in files:
        try:
            leaves(path)
        except DuplicateKeyError as err:
            raise SystemExit(f"lit-lora: {err}") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            continue
        readable.append(path)
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:
        for note in overrides(readable):
            log.info(note)
