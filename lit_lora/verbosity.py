"""The ``--verbose`` switch, as the environment variable every rank inherits (no imports: read before torch loads).

    >>> import os
    >>> os.environ[VERBOSE_ENV] = "true"
    >>> verbose()
    True
    >>> del os.environ[VERBOSE_ENV]
"""

from __future__ import annotations

import os

VERBOSE_ENV = "LIT_LORA_VERBOSE"


def verbose() -> bool:
    """Keep every library message and an input error's traceback (``--verbose`` or ``LIT_LORA_VERBOSE=1``)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")
