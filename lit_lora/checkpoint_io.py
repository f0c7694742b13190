"""Moved to ``lit_lora.cluster.checkpoint_io``; kept so existing configs keep working.

That module holds atomic checkpoint writes. Class paths such as ``lit_lora.checkpoint_io.X`` in YAML (and imports
from here) resolve to the same objects as ``lit_lora.cluster.checkpoint_io.X``; new code imports from
``lit_lora.cluster.checkpoint_io``.
"""

from lit_lora.cluster.checkpoint_io import (
    PARTIAL_PREFIX,
    AtomicCheckpointIO,
    AtomicDirectorySave,
    PartialCheckpointCleanup,
    make_saves_atomic,
    remove_partial_checkpoints,
    replace_directory,
)

__all__ = [
    "AtomicCheckpointIO",
    "AtomicDirectorySave",
    "PARTIAL_PREFIX",
    "PartialCheckpointCleanup",
    "make_saves_atomic",
    "remove_partial_checkpoints",
    "replace_directory",
]
