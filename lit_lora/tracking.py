"""Moved to ``lit_lora.cluster.tracking``; kept so existing configs keep working.

That module holds the Weights & Biases logger. Class paths such as ``lit_lora.tracking.X`` in YAML (and imports
from here) resolve to the same objects as ``lit_lora.cluster.tracking.X``; new code imports from
``lit_lora.cluster.tracking``.
"""

from lit_lora.cluster.tracking import REDACTED, RUN_ID_FILE, SECRET_WORDS, WandbRun, fill_save_dirs, is_secret, redact

__all__ = ["REDACTED", "RUN_ID_FILE", "SECRET_WORDS", "WandbRun", "fill_save_dirs", "is_secret", "redact"]
