"""Wheels of lit-lora's tested versions for a GPU machine without internet whose Python already has PyTorch.

    # on the target:  python -m pip list --format=freeze > target.txt   (a bare name means "some version")
    python bench/wheelhouse.py --target target.txt --python 3.12 --cuda 13.0 --out .whl
    # copy .whl next to the repository on the target, then:  bash bench/gpu.sh --wheels .whl

CUDA images (NGC, cloud deep-learning images) ship torch and much of the stack, but not all of lit-lora's
dependencies, and often other versions of them. This downloads, for the target's Python and platform, the
version pinned in ``requirements/cpu.lock`` of every locked package the target lacks or has at another version.
It leaves out torch (the target's CUDA build is the point), and the packages in ``KEEP`` that the target has:
compiled libraries whose version does not change what lit-lora computes, where the target's build matches its
torch and numpy. Packages with no wheel on the index (sdists) are built here, and the bitsandbytes wheel keeps
only the native library of the target's CUDA major version (the full wheel carries one per CUDA release: 43 MB).
``gpu.sh --wheels DIR`` installs the folder into a temporary directory ahead of the target's own packages.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "cpu.lock"
NEVER = {"torch", "triton"}  # the target's own CUDA build, always
KEEP = {"numpy", "pandas", "pyarrow", "matplotlib", "contourpy", "kiwisolver", "fonttools", "pillow", "lxml",
        "sympy", "mpmath", "networkx", "hf-xet", "setuptools", "wheel", "pip"}
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in (17, 24, 26, 27, 28, 31, 34, 35)] + \
            ["manylinux2014_x86_64", "manylinux1_x86_64"]


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins(lock: Path = LOCK) -> dict[str, str]:
    """``{name: version}`` of every ``name==version`` line of the lock."""
    pins = {}
    for line in lock.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;\\]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(3)
    return pins


def target_versions(text: str) -> dict[str, str | None]:
    """``{name: version or None}`` from ``pip list --format=freeze`` lines (``name==version``; a bare name or a
    ``name @ url`` line counts as installed at an unknown version)."""
    found: dict[str, str | None] = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        name, _, version = line.partition("==")
        found[normalise(name.split(" @ ")[0].strip())] = version.strip() or None
    return found


def to_carry(pins: dict[str, str], target: dict[str, str | None], skip: set[str]) -> dict[str, str]:
    """The locked packages the target needs: missing or at another (or unknown) version, less NEVER, the KEEP
    packages it has, and ``skip``."""
    carry = {}
    for name, version in sorted(pins.items()):
        base = version.split("+")[0]
        if name in NEVER or name in skip or (name in KEEP and name in target):
            continue
        if target.get(name) != base:
            carry[name] = base
    return carry


def download(carry: dict[str, str], python: str, out: Path) -> list[str]:
    """Binary wheels for the target into ``out``; returns the packages that have none (sdist only)."""
    platform_args = [arg for p in PLATFORMS for arg in ("--platform", p)]
    no_wheel = []
    for name, version in carry.items():
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                   "--python-version", python, "--implementation", "cp", *platform_args, "-d", str(out),
                   f"{name}=={version}"]
        if subprocess.run(command, capture_output=True, text=True).returncode != 0:
            no_wheel.append(name)
    return no_wheel


def build_pure_wheels(names: list[str], carry: dict[str, str], out: Path) -> None:
    """Build wheels here for packages published as sdists only; a platform-specific result is refused."""
    for name in names:
        built_here = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(out),
                                     f"{name}=={carry[name]}"], capture_output=True, text=True)
        if built_here.returncode != 0:
            raise SystemExit(f"{name}=={carry[name]}: no wheel for the target and building one failed:\n"
                             f"{built_here.stderr[-2000:]}")
        built = [w for w in out.glob("*.whl") if normalise(w.name.split("-")[0]) == name]
        if not built or not built[0].name.endswith("-none-any.whl"):
            raise SystemExit(f"{name}: no wheel for the target and the one built here is not pure Python "
                             f"({[w.name for w in built]}); build it on the target instead")


def prune_bitsandbytes(out: Path, cuda: str) -> None:
    """Keep bitsandbytes' CPU library and those of the target's CUDA major version (``13.0`` -> cuda13*)."""
    wheels = list(out.glob("bitsandbytes-*.whl"))
    if not wheels:
        return
    major = cuda.split(".")[0]
    with tempfile.TemporaryDirectory() as work:
        subprocess.run([sys.executable, "-m", "wheel", "unpack", "-d", work, str(wheels[0])], check=True,
                       capture_output=True)
        unpacked = next(Path(work).iterdir())
        libraries = list(unpacked.glob("bitsandbytes/libbitsandbytes_*.so"))
        kept = [lib for lib in libraries if re.search(rf"_(cpu|cuda{major}\d+)\.so$", lib.name)]
        if not any("cuda" in lib.name for lib in kept):
            raise SystemExit(f"bitsandbytes has no library for CUDA {cuda}: {sorted(l.name for l in libraries)}")
        for lib in set(libraries) - set(kept):
            lib.unlink()
        wheels[0].unlink()
        subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(out), str(unpacked)], check=True,
                       capture_output=True)
    print(f"bitsandbytes: kept {', '.join(sorted(l.name for l in kept))}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="the target's `pip list --format=freeze` (or names)")
    parser.add_argument("--python", required=True, help="the target's Python, e.g. 3.12")
    parser.add_argument("--cuda", required=True, help="the target's torch.version.cuda, e.g. 13.0")
    parser.add_argument("--out", type=Path, required=True, help="folder for the wheels (emptied first)")
    parser.add_argument("--skip", default="", help="comma-separated packages to leave out (e.g. wandb)")
    parser.add_argument("--max-mib", type=float, default=None, help="fail when the wheels add up to more")
    args = parser.parse_args(argv)
    carry = to_carry(locked_pins(), target_versions(Path(args.target).read_text()),
                     {normalise(s) for s in args.skip.split(",") if s.strip()})
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    build_pure_wheels(download(carry, args.python, args.out), carry, args.out)
    prune_bitsandbytes(args.out, args.cuda)
    wheels = sorted(args.out.glob("*.whl"), key=lambda w: -w.stat().st_size)
    total = sum(w.stat().st_size for w in wheels) / 2 ** 20
    print(f"{len(wheels)} wheels for {len(carry)} packages, {total:.1f} MiB in {args.out}; largest: "
          + ", ".join(f"{w.name.split('-')[0]} {w.stat().st_size / 2 ** 20:.1f}" for w in wheels[:5]))
    if args.max_mib is not None and total > args.max_mib:
        raise SystemExit(f"{total:.1f} MiB is over --max-mib {args.max_mib}: --skip the largest you can do without")


if __name__ == "__main__":
    main()
