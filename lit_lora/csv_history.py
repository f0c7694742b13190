"""Moved to ``lit_lora.cluster.csv_history``; kept so existing configs keep working.

That module holds the CSV logger that survives a requeue. Class paths such as ``lit_lora.csv_history.X`` in YAML
(and imports from here) resolve to the same objects as ``lit_lora.cluster.csv_history.X``; new code imports
from ``lit_lora.cluster.csv_history``.
"""

from lit_lora.cluster.csv_history import CSVHistoryResume, ResumableCSVLogger, pin_log_dir

__all__ = ["CSVHistoryResume", "ResumableCSVLogger", "pin_log_dir"]
