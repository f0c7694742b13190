"""Moved: the ``lit-lora`` commands are ``lit_lora.commands`` (the table and ``main``), the LightningCLI is
``lit_lora.commands.train.LitLoraCLI``. This module keeps the old names and ``python -m lit_lora.cli`` working.

    python -m lit_lora.cli fit --config configs/demo.yaml     # the same as: lit-lora fit --config configs/demo.yaml
    from lit_lora.cli import LitLoraCLI, main                   # the same objects as in lit_lora.commands
"""

from lit_lora.commands import COMMANDS, configure_logging, entry, main
from lit_lora.commands.train import LitLoraCLI, as_list

__all__ = ["COMMANDS", "LitLoraCLI", "as_list", "configure_logging", "entry", "main"]

if __name__ == "__main__":
    entry()
