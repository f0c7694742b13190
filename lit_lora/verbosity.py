"""The ``--verbose`` switch, as the environment variable every rank inherits (no imports: read before torch loads),
and which ranks print lit-lora's info lines: rank 0, and every rank for a line about that rank's own share::

    log.info("[lit-lora] ZeRO-3: rank %d loaded ...", rank, extra=EVERY_RANK)

    >>> import os
    >>> os.environ[VERBOSE_ENV] = "true"
    >>> verbose()
    True
    >>> del os.environ[VERBOSE_ENV]
"""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "LIT_LORA_VERBOSE"
EVERY_RANK = {"every_rank": True}  # ``extra=`` of an info line that each rank prints


def verbose() -> bool:
    """Keep every library message and an input error's traceback (``--verbose`` or ``LIT_LORA_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


class InfoFromRankZero(logging.Filter):
    """Every rank runs the same code and would print each info line once per rank: the other ranks print only
    warnings, errors and ``EVERY_RANK`` lines. The rank is Lightning's (from the environment at start, the
    strategy's once it is set up)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING or getattr(record, "every_rank", False):
            return True
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        return getattr(rank_zero_only, "rank", 0) == 0
