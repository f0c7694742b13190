"""``lit-lora <command> --help`` starts with the one usage line and an example of that command, then its
description: argparse's own usage lists every option of the CLI, about a hundred lines before anything else."""

from __future__ import annotations

import pytest
from harness import cli_exit


@pytest.mark.parametrize("command, example", [
    ("fit", "lit-lora fit --config configs/demo.yaml"),
    ("merge", "lit-lora merge --config runs/demo/lightning_logs/version_0/config.yaml --adapter_dir"),
])
def test_help_starts_with_short_usage_and_an_example(command, example, capsys):
    assert cli_exit([command, "--help"]) == (0, "")
    head = capsys.readouterr().out.splitlines()[:4]
    assert head[0] == f"usage: lit-lora {command} --config FILE [--model.… / --data.… / --trainer.… VALUE]", head
    assert head[1].strip().startswith(f"e.g.  {example}"), head
    assert head[3].startswith(f"lit-lora {command}: "), head  # the description, right under the usage
