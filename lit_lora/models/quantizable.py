"""Make every linear layer visible to bitsandbytes quantization in transformers.

transformers replaces only modules whose type *is* ``nn.Linear`` (or GPT-2's Conv1D) with
bitsandbytes layers. Falcon builds its projections from ``FalconLinear``, an ``nn.Linear`` subclass
whose forward is the same affine map, so a "4-bit" Falcon load silently stays in full precision.
While a quantized model is built, such subclasses are swapped for ``nn.Linear`` (same parameters,
same math), so the weights really are quantized::

    with plain_linear_layers():
        model = AutoModelForCausalLM.from_pretrained("tiiuae/falcon-7b", quantization_config=bnb_config)
"""

from __future__ import annotations

import contextlib
import importlib

from torch import nn

# module path -> names of nn.Linear subclasses that compute exactly ``F.linear(x, weight, bias)``
AFFINE_LINEAR_SUBCLASSES = {
    "transformers.models.falcon.modeling_falcon": ("FalconLinear",),
}


@contextlib.contextmanager
def plain_linear_layers():
    """Within the block, models are built with ``nn.Linear`` in place of the affine subclasses above."""
    patched = []
    for module_path, names in AFFINE_LINEAR_SUBCLASSES.items():
        try:
            module = importlib.import_module(module_path)
        except ImportError:
            continue
        for name in names:
            if hasattr(module, name):
                patched.append((module, name, getattr(module, name)))
                setattr(module, name, nn.Linear)
    try:
        yield
    finally:
        for module, name, original in patched:
            setattr(module, name, original)
