"""Check that this environment holds exactly the versions of a lock file (what `pip freeze` would show).

    python scripts/check_lock.py requirements/cpu.lock              # exit 1 and name every mismatch
    python scripts/check_lock.py requirements/cpu.lock --keep torch  # torch is the environment's own build

Run by scripts/install.sh after installing from the lock, so an install that drifted fails loudly.
"""
from __future__ import annotations

import argparse
import re
import sys
from importlib import metadata
from pathlib import Path

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: Path) -> dict[str, str]:
    """name -> pinned version of every `name==version` line; any other requirement line is an error."""
    pins: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = PIN.match(text)
        if match is None:
            raise SystemExit(f"{path}:{number}: not an exact pin (name==version): {text!r}")
        pins[canonical(match[1])] = match[2]
    return pins


def installed() -> dict[str, str]:
    return {canonical(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lock", type=Path)
    parser.add_argument("--keep", action="append", default=[], help="a package whose installed build may differ")
    args = parser.parse_args(argv)
    pins, have, kept = read_lock(args.lock), installed(), {canonical(k) for k in args.keep}
    problems = []
    for name, version in sorted(pins.items()):
        if name in kept:
            print(f"[check_lock] {name}: the environment's own {have.get(name, 'missing')} (lock: {version})")
        elif name not in have:
            problems.append(f"{name}=={version} is not installed")
        elif have[name] != version:
            problems.append(f"{name} is {have[name]}, the lock says {version}")
    if problems:
        print(f"[check_lock] this environment differs from {args.lock}:", *problems, sep="\n  ", file=sys.stderr)
        return 1
    print(f"[check_lock] {len(pins) - len(kept & pins.keys())} packages match {args.lock}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
