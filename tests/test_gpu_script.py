"""``bench/gpu.sh`` on a CPU, its env step alone (``--only env``): what it prints and the command it would run.

* a ``gpu_throughput.md`` an earlier run left in the results folder is not printed as this run's table;
* where pytest-timeout is missing, the ``pytest -m gpu`` command leaves out ``--timeout`` (a usage error that would
  run no gpu test at all) and says so; where it is installed, each test has its 150 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import REPO, subprocess_env

pytestmark = pytest.mark.slow


def gpu_script(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--only", "env", *args], cwd=REPO,
                          env=subprocess_env({"OUT": str(out), "PYTHON": sys.executable, **(env or {})}),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_a_throughput_table_of_an_earlier_run_is_not_printed_as_this_ones(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    stale = out / "gpu_throughput.md"
    stale.write_text("| lora_bf16 | sdpa | 12345 | STALE-TABLE |\n")
    hour_ago = time.time() - 3600
    os.utime(stale, (hour_ago, hour_ago))
    done = gpu_script(out)
    assert "STALE-TABLE" not in done.stdout, done.stdout[-2000:]
    assert "gpu_throughput.md is from an earlier run (this one wrote none): not printed" in done.stdout


def test_the_gpu_tests_run_without_a_per_test_timeout_where_pytest_timeout_is_missing(tmp_path):
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "pytest_timeout.py").write_text("raise ImportError('pytest-timeout hidden by the test')\n")
    done = gpu_script(tmp_path / "out", "--dry-run", env={"PYTHONPATH": str(hidden)})
    (command,) = [line for line in done.stdout.splitlines() if "would run:" in line and "-m pytest" in line]
    assert "--timeout" not in command and " -m gpu " in command, command
    assert "pytest-timeout is missing" in done.stdout, done.stdout[-2000:]
    done = gpu_script(tmp_path / "out2", "--dry-run")
    (command,) = [line for line in done.stdout.splitlines() if "would run:" in line and "-m pytest" in line]
    assert "--timeout 150" in command, command
