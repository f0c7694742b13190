"""Ctrl-C ends every ``lit-lora`` command the same way: one line on stderr and exit status 130 (what a shell
reports for a command stopped by SIGINT), not a traceback from wherever the imports or the run were, nor
Lightning's exit status 1 after its graceful shutdown."""

from __future__ import annotations

import signal
import sys

import pytest
from harness import cli_exit

import lit_lora.commands as commands


def test_ctrl_c_during_a_command_is_one_line_and_status_130(monkeypatch, capsys):
    def interrupted_main():
        raise KeyboardInterrupt  # Ctrl-C while torch imports or a dataset tokenises

    monkeypatch.setattr(commands, "main", interrupted_main)
    try:
        status, _ = cli_exit(["fit", "--config", "x.yaml"])
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C reached the user as a KeyboardInterrupt traceback")
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines() == ["lit-lora: interrupted (Ctrl-C); exit status 130"]


def test_ctrl_c_during_training_is_status_130_not_lightnings_1(monkeypatch, capsys):
    def lightning_like_main():
        try:  # the Trainer catches the interrupt, shuts down, then sys.exit(1)
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            print("Detected KeyboardInterrupt, attempting graceful shutdown ...", file=sys.stderr)
            sys.exit(1)

    monkeypatch.setattr(commands, "main", lightning_like_main)
    status, _ = cli_exit(["fit", "--config", "x.yaml"])
    assert status == 130
    assert capsys.readouterr().err.strip().splitlines()[-1] == "lit-lora: interrupted (Ctrl-C); exit status 130"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back after the command


def test_a_commands_own_exit_status_is_kept_without_ctrl_c(monkeypatch):
    monkeypatch.setattr(commands, "main", lambda: sys.exit(1))
    assert cli_exit(["estimate", "--config", "x.yaml"]) == (1, "")
