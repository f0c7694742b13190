"""The lock of the tested environment: complete, CPU-only, within pyproject's ranges, and what the README says."""

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "cpu.lock"


def pins() -> dict[str, str]:
    return {name.lower(): version for name, version in re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", LOCK.read_text(), re.M)}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_requirement_of_pyproject_is_locked_within_its_range():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    locked = {canonical(k): v for k, v in pins().items()}
    for line in project["dependencies"] + project["optional-dependencies"]["dev"]:
        requirement = Requirement(line)
        name = canonical(requirement.name)
        assert name in locked, f"{requirement.name} is required by pyproject.toml but not in {LOCK.name}"
        assert requirement.specifier.contains(locked[name], prereleases=True), \
            f"{LOCK.name} pins {name}=={locked[name]}, outside pyproject.toml's {requirement}"


def test_the_cpu_lock_pulls_no_cuda_wheels():
    cuda = [name for name in pins() if name.startswith("nvidia-") or name in ("triton", "cuda-python")]
    assert not cuda and pins()["torch"].endswith("+cpu"), cuda


def test_readme_lists_the_locked_versions():
    result = subprocess.run([sys.executable, "scripts/tested_versions.py", "--check", "README.md"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def check_lock(lock: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "check_lock.py"), str(lock), *args],
                          capture_output=True, text=True)


def test_check_lock_names_every_package_that_differs(tmp_path):
    torch, pytest_version = metadata.version("torch"), metadata.version("pytest")
    good = tmp_path / "good.lock"
    good.write_text(f"# a comment\ntorch=={torch}\n    # via something\npytest=={pytest_version}\n")
    assert check_lock(good).returncode == 0
    bad = tmp_path / "bad.lock"
    bad.write_text(f"torch==0.0.1\npytest=={pytest_version}\nno-such-package-here==1.0\n")
    result = check_lock(bad)
    assert result.returncode == 1
    assert f"torch is {torch}, the lock says 0.0.1" in result.stderr
    assert "no-such-package-here==1.0 is not installed" in result.stderr and "pytest is" not in result.stderr
    assert check_lock(bad, "--keep", "torch").returncode == 1  # the missing package still counts
    unpinned = tmp_path / "unpinned.lock"
    unpinned.write_text("torch>=2\n")
    assert "unpinned.lock:1: not an exact pin" in check_lock(unpinned).stderr
