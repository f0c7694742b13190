"""Full weights of a sharded model for export: DeepSpeed ZeRO-3 and FSDP keep only a shard per rank.

Saving ``model.save_pretrained`` on rank 0 alone under ZeRO-3 writes empty tensors, and under FSDP
it hangs (FSDP's state_dict is a collective). ``gathered_state_dict`` is called on *every* rank and
returns the full state dict to hand to ``save_pretrained(state_dict=…)`` (``None`` when the model is
not sharded, so peft / transformers read the weights as usual)::

    state = gathered_state_dict(module)   # all ranks
    if trainer.is_global_zero:
        module.model.save_pretrained(out, state_dict=state)
"""

from __future__ import annotations

from typing import Optional

import torch


def is_zero3_partitioned(model: torch.nn.Module) -> bool:
    """DeepSpeed ZeRO-3 marks each partitioned parameter with ``ds_id``."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def _zero3_state_dict(model: torch.nn.Module, trainable_only: bool) -> dict[str, torch.Tensor]:
    """Gather partitioned parameters (only the trainable ones for an adapter) and copy them to the CPU."""
    import deepspeed

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not trainable_only]
    with deepspeed.zero.GatheredParameters([p for _, p in named], modifier_rank=None):
        state = {n: p.detach().cpu().clone() for n, p in named}
    if not trainable_only:  # buffers are not partitioned
        state.update({n: b.detach().cpu().clone() for n, b in model.named_buffers()})
    return state


def _fsdp_state_dict(module) -> dict[str, torch.Tensor]:
    """Lightning's FSDP full state dict of the LightningModule, re-keyed to ``module.model``."""
    full = module.trainer.strategy.lightning_module_state_dict()
    prefix = "model."
    return {k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)}


def gathered_state_dict(module) -> Optional[dict[str, torch.Tensor]]:
    """Full state dict of ``module.model`` under ZeRO-3 / FSDP (collective: call on all ranks), else ``None``."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return None
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        return _fsdp_state_dict(module)
    if is_zero3_partitioned(module.model):
        return _zero3_state_dict(module.model, trainable_only=module.is_peft)
    return None
