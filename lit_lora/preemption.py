"""Moved to ``lit_lora.cluster.preemption``; kept so existing configs keep working.

That module holds the SLURM preemption callback. Class paths such as ``lit_lora.preemption.X`` in YAML (and
imports from here) resolve to the same objects as ``lit_lora.cluster.preemption.X``; new code imports from
``lit_lora.cluster.preemption``.
"""

from lit_lora.cluster.preemption import PreemptionCheckpoint, Requeued, signal_names, under_slurm
from lit_lora.cluster.checkpoint_io import make_saves_atomic
from lit_lora.cluster.csv_history import pin_log_dir
from lit_lora.cluster.lightning_compat import fit_ckpt_path

__all__ = [
    "PreemptionCheckpoint",
    "Requeued",
    "fit_ckpt_path",
    "make_saves_atomic",
    "pin_log_dir",
    "signal_names",
    "under_slurm",
]
