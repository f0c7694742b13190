"""The value checks ``lit-lora fit`` makes before it loads anything, made for every point when a sweep is
written: a point fit would refuse (``lr: -1``, ``batch_size: 0``, a method × strategy combination that cannot
train) is an error then, not an array task that waits in the queue to fail at its start.

    >>> refused_values({"model": {"init_args": {"optim": {"lr": -1.0}}}})
    'model.init_args.optim.lr must be above 0, got -1.0'
    >>> refused_values({"data": {"init_args": {"batch_size": 8}}}) is None
    True

The checks are fit's own: the optimizer settings' (``lit_lora.optim.OptimizerSettings``), the data settings'
ranges (``lit_lora.data.base.check_ranges``) and the config's combinations (``lit_lora.compatibility``), the
last as on the GPU nodes a sweep submits to.
"""

from __future__ import annotations

from typing import Any, Optional

from lit_lora.compatibility import check_config
from lit_lora.data.base import MINIMUM, check_ranges
from lit_lora.errors import IncompatibleConfig
from lit_lora.optim import OptimizerSettings


def refused_values(config: dict) -> Optional[str]:
    """Why ``lit-lora fit`` would refuse the resolved point ``config`` before loading anything, or ``None``."""
    model, data = _init_args(config, "model"), _init_args(config, "data")
    try:
        OptimizerSettings(**(model.get("optim") or {}))
        check_ranges(data.get("sample_fraction"), **{name: data[name] for name in MINIMUM if name in data})
        check_config(config, cuda_available=True)
    except IncompatibleConfig as err:
        return str(err)
    return None


def _init_args(config: dict, section: str) -> dict[str, Any]:
    return ((config.get(section) or {}).get("init_args") or {}) if isinstance(config.get(section), dict) else {}
