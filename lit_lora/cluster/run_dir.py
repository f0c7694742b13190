"""Where a run's files go: the first logger's directory (``lightning_logs/version_N`` or a pinned one), else
``trainer.default_root_dir``.

    from lit_lora.cluster.run_dir import run_dir
    run_dir(trainer) / "adapter"      # the same path on every rank

``trainer.log_dir`` is broadcast from rank 0, so every rank must ask (it is a collective under DDP).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_dir(trainer: Any) -> Path:
    """The run directory; call it on every rank."""
    return Path(trainer.log_dir or trainer.default_root_dir)
