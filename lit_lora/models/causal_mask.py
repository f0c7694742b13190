"""Right-padded batches of a causal LM run without their padding mask: the causal mask alone is the same mask.

In a right-padded row every pad comes after every real token, so causal attention already keeps each real token
from the pads: the padding mask takes away nothing the causal mask lets through, and positions count from 0 either
way. Given no mask, transformers hands SDPA ``is_causal=True`` (its fused causal kernels: FlashAttention on a GPU)
instead of a ``(batch, 1, L, L)`` mask built and read at every layer; eager attention skips the padding part.
Real tokens get the same attention, so the same loss and gradients; pad positions compute values that nothing reads
(their labels are -100). A batch that is not right-padded (left padding, a 0/1 pattern with holes, other values)
keeps its mask::

    >>> import torch
    >>> right_padded(torch.tensor([[1, 1, 1], [1, 1, 0]])), right_padded(torch.tensor([[1, 1, 1], [0, 1, 1]]))
    (True, False)

Only for SDPA and eager attention: FlashAttention 2 / 3 use the mask to unpad the batch into varlen rows, which
skips the pads' attention. Prompt-learning adapters keep the mask too (peft extends it over their virtual tokens),
and so do models from remote code (``trust_remote_code``), whose attention may build its causal mask from it.
"""

from __future__ import annotations

from typing import Optional

import torch

# attention that reads no mask for a right-padded causal batch (torch_varlen runs such a batch through sdpa)
CAUSAL_KERNEL_ATTENTION = ("sdpa", "eager", "torch_varlen")


def right_padded(mask: torch.Tensor) -> bool:
    """Whether every row of a 2-D 0/1 mask is ones then zeros (one check: a device sync on a GPU)."""
    if mask.dim() != 2:
        return False
    binary = ((mask == 0) | (mask == 1)).all()
    ones_first = (mask[:, 1:] <= mask[:, :-1]).all()
    return bool(binary & ones_first)


def keeps_padding_mask(model: Optional[torch.nn.Module]) -> Optional[str]:
    """Why this built causal LM needs its padding mask even when right-padded, or ``None``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    model_class = next(c for c in type(base).__mro__ if not c.__module__.startswith("torch."))  # past FSDP2's class
    if not model_class.__module__.startswith("transformers."):
        return f"{model_class.__name__} is remote code, whose attention may need the mask to be causal"
    config = getattr(model, "config", None)
    attention = getattr(config, "_attn_implementation", None)
    if attention not in CAUSAL_KERNEL_ATTENTION:
        return f"attention {attention!r} reads the padding mask"
    peft_config = getattr(model, "peft_config", None) or {}
    active = peft_config.get(getattr(model, "active_adapter", None) or "default")
    if active is not None and getattr(active, "is_prompt_learning", False):
        return f"{type(active).__name__} extends the mask over its virtual tokens"
    return None


def without_redundant_mask(batch: dict, model: Optional[torch.nn.Module]) -> dict:
    """``batch`` without ``attention_mask`` where the causal mask alone is the same mask (see the module doc)."""
    mask = batch.get("attention_mask")
    if mask is None or keeps_padding_mask(model) is not None or not right_padded(mask):
        return batch
    return {key: value for key, value in batch.items() if key != "attention_mask"}
