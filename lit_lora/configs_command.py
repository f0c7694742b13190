"""``lit-lora configs``: the reference and tutorial configs that ship inside the package (``tune ls`` / ``tune cp``).

    lit-lora configs list                          # name and first header line of every bundled config
    lit-lora configs copy demo                     # -> ./demo.yaml (refuses to overwrite without --force)
    lit-lora configs copy roberta_large_lora_multinli my_exp.yaml
    lit-lora configs copy loggers/wandb configs/   # a fragment, into a directory
    lit-lora fit --config demo.yaml

The configs are ``lit_lora/configs/`` in the installed package (package data). In the repository that
directory is a symlink to the top-level ``configs/``, so ``configs/<name>.yaml`` keeps working there.
Fragments (``loggers/…``, ``strategies/…``) are added to a full config with a second ``--config``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Optional


def configs_dir() -> Path:
    """The bundled configs: ``lit_lora/configs`` of the installed package (else the repository's ``configs/``)."""
    packaged = Path(str(resources.files("lit_lora") / "configs"))
    if packaged.is_dir():
        return packaged
    repo = Path(__file__).resolve().parent.parent / "configs"
    if repo.is_dir():
        return repo
    raise FileNotFoundError(f"no bundled configs found (looked in {packaged} and {repo})")


def available() -> dict[str, Path]:
    """Config name (path under the configs directory, without ``.yaml``) -> file, full configs first."""
    root = configs_dir()
    files = sorted(root.rglob("*.yaml"), key=lambda p: (len(p.relative_to(root).parts), str(p.relative_to(root))))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in files}


def header_line(path: Path) -> str:
    """The first comment line of a config, without ``#``."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""


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
    configs = available()
    width = max(len(k) for k in configs)
    for name, path in configs.items():
        print(f"{name:<{width}}  {header_line(path)}")


def copy_config(name: str, dest: Optional[str], force: bool) -> Path:
    source = find(name)
    target = Path(dest) if dest else Path(source.name)
    if target.is_dir() or (dest is not None and dest.endswith(("/", "\\"))):
        target = target / source.name
    if target.exists() and not force:
        raise SystemExit(f"lit-lora configs copy: {target} exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    print(f"[lit-lora] copied {name} to {target}; run it with: lit-lora fit --config {target}")
    return target


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-lora configs", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="name and first header line of every bundled config")
    copy = sub.add_parser("copy", help="write a bundled config to DEST (default: ./<name>.yaml)")
    copy.add_argument("name", help="a name from `lit-lora configs list` (e.g. demo, loggers/wandb)")
    copy.add_argument("dest", nargs="?", help="file or existing directory (default: the current directory)")
    copy.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "list":
        list_configs()
    else:
        copy_config(args.name, args.dest, args.force)
