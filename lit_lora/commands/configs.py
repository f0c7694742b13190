"""``lit-lora configs``: the reference and tutorial configs that ship inside the package, to list and copy.

    lit-lora configs list                          # every bundled config, by group, with its first header line
    lit-lora configs                               # the same
    lit-lora configs copy demo                     # -> ./demo.yaml (refuses to overwrite without --force)
    lit-lora configs copy nli/roberta_large_lora_multinli my_exp.yaml   # or just roberta_large_lora_multinli
    lit-lora configs copy loggers/wandb configs/   # a fragment, into a directory
    lit-lora fit --config demo.yaml

The configs are ``lit_lora/configs/`` in the installed package (package data). In the repository that
directory is a symlink to the top-level ``configs/``, so ``configs/<group>/<name>.yaml`` keeps working there.
They are grouped by workload (``GROUPS``): ``demo.yaml`` at the top, ``tutorials/`` (CPU, tiny models, minutes),
then the reference experiments (``code/``, ``dialogue/``, ``nli/``: GPU, real models), and the fragments
(``loggers/…``, ``strategies/…``), which are added to a full config with a second ``--config``.
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Optional


# Group (folder under configs/; "" is the top level) -> what its configs are, in the order `configs list` shows them.
GROUPS = {
    "": "start here: the demo, a tiny model on the CPU",
    "tutorials": "small or tiny models, minutes on a CPU, no GPU needed",
    "code": "reference experiments on a GPU: code generation (python-codes-25k, DS-1000)",
    "dialogue": "reference experiments on a GPU: dialogue (counselling conversations)",
    "nli": "reference experiments on a GPU: natural language inference (MultiNLI, SNLI)",
    "loggers": "fragments: a logger, added with a second --config",
    "strategies": "fragments: a distributed strategy, added with a second --config",
}
FRAGMENT_GROUPS = ("loggers", "strategies")


def group_of(name: str) -> str:
    """The group of a config name (``nli/phi2_qlora_snli`` -> ``nli``; ``demo`` -> ``""``)."""
    return name.rsplit("/", 1)[0] if "/" in name else ""


def is_fragment(name: str) -> bool:
    """Whether a config (name or path relative to the configs directory) is a fragment, not a complete config."""
    return group_of(name.removesuffix(".yaml")).split("/")[0] in FRAGMENT_GROUPS


def configs_dir() -> Path:
    """The bundled configs: ``lit_lora/configs`` of the installed package (else the repository's ``configs/``)."""
    packaged = Path(str(resources.files("lit_lora") / "configs"))
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parents[2] / "configs"
    if repo.is_dir():
        return repo
    raise FileNotFoundError(f"no bundled configs found (looked in {packaged} and {repo})")


def available() -> dict[str, Path]:
    """Config name (path under the configs directory, without ``.yaml``) -> file, in ``GROUPS`` order (a folder
    ``GROUPS`` does not name comes after the experiments, before the fragments)."""
    root = configs_dir()
    order = {group: i for i, group in enumerate(GROUPS)}
    unknown = len(GROUPS) - len(FRAGMENT_GROUPS) - 0.5

    def key(path: Path):
        name = path.relative_to(root).with_suffix("").as_posix()
        return order.get(group_of(name), unknown), name

    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"), key=key)}


def header_line(path: Path) -> str:
    """The first sentence of a config's leading comment, without ``#`` (it may run over several lines)."""
    words: list[str] = []
    for line in path.read_text().splitlines():
        text = line.lstrip("#").strip()
        if not line.startswith("#") or not text or line.startswith("#  "):  # code, a blank, an indented example
            break
        words.append(text)
    joined = " ".join(words)
    end = next((m.end() for m in re.finditer(r"(?<!e\.g)\.(\s|$)", joined)), len(joined))
    return joined[:end].strip()


def find(name: str) -> Path:
    configs = available()
    key = name.removesuffix(".yaml").removeprefix("configs/")
    if key in configs:
        return configs[key]
    by_stem = [k for k in configs if k.rsplit("/", 1)[-1] == key]
    if len(by_stem) == 1:
        return configs[by_stem[0]]
    import difflib

    close = difflib.get_close_matches(key, list(configs), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise SystemExit(f"lit-lora configs: no config named {name!r}{hint} (`lit-lora configs list` shows them)")


def list_configs() -> None:
    """Every bundled config under a heading for its group: name (what ``copy`` takes) and first header line."""
    configs = available()
    width = max(len(k) for k in configs)
    shown = None
    for name, path in configs.items():
        group = group_of(name)
        if group != shown:
            if shown is not None:
                print()
            print(f"{group + '/' if group else 'configs/'}  {GROUPS.get(group, '')}".rstrip())
            shown = group
        print(f"  {name:<{width}}  {header_line(path)}")


def copy_config(name: str, dest: Optional[str], force: bool) -> Path:
    source = find(name)
    target = Path(dest) if dest else Path(source.name)
    if target.is_dir() or (dest is not None and dest.endswith(("/", "\\"))):
        target = target / source.name
    if target.exists() and not force:
        raise SystemExit(f"lit-lora configs copy: {target} exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    fragment = is_fragment(source.relative_to(configs_dir()).as_posix())  # `copy wandb` names loggers/wandb.yaml
    run = f"lit-lora fit --config <experiment>.yaml --config {target}   (a fragment: it goes after a whole config)" \
        if fragment else f"lit-lora fit --config {target}"
    print(f"[lit-lora] copied {name} to {target}; run it with: {run}")
    return target


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-lora configs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command")  # none: list, what a bare `lit-lora configs` is asked for
    sub.add_parser("list", help="name and first header line of every bundled config")
    copy = sub.add_parser("copy", help="write a bundled config to DEST (default: ./<name>.yaml)")
    copy.add_argument("name", help="a name from `lit-lora configs list` (e.g. demo, loggers/wandb)")
    copy.add_argument("dest", nargs="?", help="file or existing directory (default: the current directory)")
    copy.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command in ("list", None):
        list_configs()
    else:
        copy_config(args.name, args.dest, args.force)
