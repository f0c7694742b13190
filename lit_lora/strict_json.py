"""JSON that every parser accepts: NaN and ±inf are written as ``null``, never as the ``NaN`` literal.

Python's ``json.dumps`` writes ``float("nan")`` as ``NaN``, which is not JSON (``jq``, JavaScript and
strict parsers reject the whole file). Every JSON file lit-lora writes goes through ``dumps``::

    >>> from lit_lora.strict_json import dumps
    >>> dumps({"tuned_val_loss": float("nan"), "steps": 4})
    '{"tuned_val_loss": null, "steps": 4}'
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (in dicts, lists and tuples, at any depth) replaced by ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs) -> str:
    """``json.dumps`` with NaN / inf as ``null``; ``allow_nan=False`` turns any that slip through into an error."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
