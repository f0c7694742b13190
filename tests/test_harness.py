"""The shared test harness (``tests/harness.py``): its metrics readers, its subprocess runner, and the rule that
tests share helpers through it only (no test imports another test module, none edits ``sys.path``)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from harness import (REPO, logged_steps, metrics_rows, read_losses, run_cli_subprocess, subprocess_env,
                     validation_rows)

METRICS_CSV = """\
epoch,lr-AdamW,step,train_loss,val_loss
0,0.001,0,2.5,
0,0.001,1,2.25,
0,,1,,2.0
0,0.001,2,2.0,
"""


def test_metrics_readers_key_losses_by_optimizer_steps_done(tmp_path):
    (tmp_path / "metrics.csv").write_text(METRICS_CSV)
    assert len(metrics_rows(tmp_path)) == 4 and metrics_rows(tmp_path)[2]["train_loss"] == ""
    assert read_losses(tmp_path) == {1: 2.5, 2: 2.25, 3: 2.0}  # the row of step s: optimizer step s + 1
    assert read_losses(tmp_path, "val_loss") == {2: 2.0}
    assert logged_steps(tmp_path) == [0, 1, 2]  # as logged
    assert validation_rows(tmp_path) == [{"epoch": 0.0, "step": 1.0, "val_loss": 2.0}]


def test_subprocesses_run_offline_with_this_environment_first_on_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("LIT_LORA_VERBOSE", "1")
    env = subprocess_env({"LIT_LORA_VERBOSE": None, "GRAD_DUMP": "/tmp/x"})
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "offline" and env["GRAD_DUMP"] == "/tmp/x"
    assert "LIT_LORA_VERBOSE" not in env
    assert env["PATH"].split(":")[0] == str(Path(sys.executable).parent)


def test_a_failing_command_fails_the_test_with_its_output():
    with pytest.raises(AssertionError, match=r"(?s)lit-lora configs copy dmeo exited 1.*did you mean demo"):
        run_cli_subprocess(["configs", "copy", "dmeo"], via="module")
    result = run_cli_subprocess(["configs", "copy", "dmeo"], via="module", check=False)
    assert result.returncode == 1 and "did you mean demo" in result.stderr


def test_tests_share_helpers_through_the_harness_only():
    """A test module imported by another runs its module-level code twice and couples the two files; shared
    helpers belong in tests/harness.py (or tests/conftest.py for fixtures)."""
    cross_import = re.compile(r"^\s*(?:from|import)\s+(?:tests\.)?test_\w+", re.MULTILINE)
    path_edit = re.compile(r"sys\.path\.(?:insert|append)\(")
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        text = path.read_text()
        if path.name == "test_harness.py":
            continue
        offenders += [f"{path.relative_to(REPO)}: {m.group(0).strip()}" for m in cross_import.finditer(text)]
        offenders += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in path_edit.finditer(text)]
    assert offenders == []
