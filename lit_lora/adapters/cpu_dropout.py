"""LoRA's dropout on a CPU, drawn two elements to a random number: torch's dropout distribution, faster.

On a CPU torch draws a dropout mask with ``bernoulli_``, one Mersenne Twister number per element, and keeps a
float mask for the backward. With LoRA's usual dropout (0.05) on every linear layer, a CPU training step takes
about 1.36× as long as without dropout (``python bench/lora_dropout.py``). Here one ``random_`` draw of 63
random bits decides two elements, 31 bits each, each dropped when its bits fall below ``p · 2³¹``. So every
element is dropped independently with probability ``p`` (rounded to 2⁻³¹), the kept ones are scaled by
``1 / (1 - p)`` exactly as ``torch.nn.functional.dropout`` scales them, the draws come from torch's default
generator (``torch.manual_seed`` repeats them, as lit-lora's per-step seeding needs), and the backward keeps a
one-byte mask::

    >>> import torch
    >>> from lit_lora.adapters.cpu_dropout import dropout
    >>> _ = torch.manual_seed(0)
    >>> kept = dropout(torch.ones(1000, 1000), 0.1)
    >>> round(float((kept == 0).float().mean()), 3), kept.max().item() == torch.tensor(1 / 0.9).item()
    (0.1, True)

``fused_lora.FusedLoraLinear`` uses it for peft's ``nn.Dropout`` on CPU tensors; a GPU keeps torch's fused dropout
kernel. The mask is drawn by one custom operator (``lit_lora::keep_mask``), so compiled layers (``compile: true``)
draw the eager masks too instead of inductor's own, tensor by tensor the same under the same seed.
"""

from __future__ import annotations

import sys
from typing import Optional

import torch


# below this many elements torch's one-call dropout is faster than the few calls here (64k: about level)
MIN_ELEMENTS = 1 << 16
LOW_31_BITS_OF_EACH_HALF = 0x7FFFFFFF7FFFFFFF  # of an int64 draw: two 31-bit numbers


def applies(module: torch.nn.Module, x: torch.Tensor) -> bool:
    """Whether ``module`` is a training ``nn.Dropout`` (exactly, not a subclass) this function can stand in for."""
    compiling = torch.compiler.is_compiling()  # compiled: no size test, a guard on it could recompile the layer
    return (type(module) is torch.nn.Dropout and module.training and 0.0 < module.p < 1.0
            and x.device.type == "cpu" and x.is_floating_point() and sys.byteorder == "little"
            and (compiling or x.numel() >= MIN_ELEMENTS))


def keep_mask(shape: torch.Size, p: float) -> torch.Tensor:
    """A boolean mask of ``shape``, each element ``False`` with probability ``p``, two elements per random draw."""
    numel = shape.numel()
    draws = torch.empty((numel + 1) // 2, dtype=torch.int64).random_()  # uniform on [0, 2^63): 63 random bits
    halves = draws.bitwise_and_(LOW_31_BITS_OF_EACH_HALF).view(torch.int32)  # 2 × 31 random bits, little-endian
    return (halves >= round(p * 2**31))[:numel].view(shape)


@torch.library.custom_op("lit_lora::keep_mask", mutates_args=(), device_types="cpu",
                        tags=(torch.Tag.nondeterministic_seeded,))
def _keep_mask_op(x: torch.Tensor, site: torch.Tensor, p: float) -> torch.Tensor:
    """``keep_mask`` for ``x`` as one opaque operator: ``torch.compile`` calls it rather than drawing its own
    masks. ``site`` (a tensor of the dropout's own layer) is unused: it keeps a graph compiler from merging two
    draws over the same input (peft's q, k and v dropouts) into one shared mask. The tag marks it random."""
    return keep_mask(x.shape, p)


@_keep_mask_op.register_fake
def _(x: torch.Tensor, site: torch.Tensor, p: float) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.bool)


def dropout(x: torch.Tensor, p: float, site: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Training-mode dropout of a CPU tensor with probability ``p`` in (0, 1) (see the module docstring); ``site``:
    a tensor owned by the dropout's layer (its LoRA A weight), so that compiled draws stay one per layer."""
    keep = _keep_mask_op(x, x if site is None else site, p)
    return torch.where(keep, x, 0.0).mul_(1.0 / (1.0 - p))  # autograd keeps only the boolean mask
