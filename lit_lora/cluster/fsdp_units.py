"""Three places where torch's FSDP (``FullyShardedDataParallel``, as Lightning's ``FSDPStrategy`` wraps the
LightningModule: ``use_orig_params=True``, one unit per decoder layer, the rest in the root unit) leaves the
weights of the root unit — embeddings, final norm, LM head — unusable, and what ``lit-lora`` does about each.

**After a backward, without sharding.** FSDP swaps a unit's parameters for plain tensor views while a backward
runs, and the unit's post-backward hook swaps them back. Under LoRA the root unit holds only frozen weights, so
that hook never fires; a sharded unit is still put back by FSDP's end-of-backward catch-all, but an unsharded
one (``NO_SHARD``, which FSDP picks by itself on one rank) passes that check as "already resharded" and keeps
the plain tensors. They are then missing from ``named_parameters()`` and from the state dict (the first
checkpoint save stops: "FSDP assumes …embed_tokens.weight is in the state_dict"), and the next forward takes
them for parameters the user replaced and adopts them for good. ``FrozenFSDPUnitsRestored`` registers them
again right after each backward, before that can happen, as FSDP's own reshard does
(``FlatParamHandle._use_sharded_views``: without sharding, the whole-weight views become the original
``nn.Parameter`` objects again). ``lit-lora`` adds it to every Trainer it builds (``cluster/runtime.py``).

**Generation, with sharding.** ``model.generate`` calls the decoder layers, whose units gather their weights in
their own forward, but never the root unit's forward (the LightningModule's), so the embeddings are still a
flat shard ("'weight' must be 2-D"). ``root_unit_gathered(module)`` holds the root unit's weights whole around
such a call (``FullyShardedDataParallel.summon_full_params(root, recurse=False)``): the embeddings and the LM
head, not the layers. Outside FSDP it does nothing::

    with root_unit_gathered(module):
        module.model.generate(input_ids)

**Gradient clipping by norm.** Lightning's FSDP precision plugin refuses ``gradient_clip_algorithm: norm`` (the
reference QLoRA configs clip at 0.3 or 1.0): the norm must be taken over every rank's shard, which the root
unit's ``clip_grad_norm_`` does. ``FineTuneModule.configure_gradient_clipping`` calls it through
``clip_fsdp_grad_norm``, as Lightning's FSDP guide does.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from lightning.pytorch import Callback

from lit_lora.cluster.lightning_compat import attached_trainer


def fsdp_root(module):
    """The FSDP unit Lightning wrapped ``module`` (a LightningModule) in; ``None`` outside FSDP."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    trainer = attached_trainer(module)
    root = getattr(trainer.strategy, "model", None) if trainer is not None else None
    return root if isinstance(root, FullyShardedDataParallel) else None


@contextlib.contextmanager
def root_unit_gathered(module) -> Iterator[None]:
    """The root FSDP unit's weights whole inside the block (a collective under sharding: every rank enters)."""
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    root = fsdp_root(module)
    if root is None or root.sharding_strategy == ShardingStrategy.NO_SHARD:
        yield
        return
    with FullyShardedDataParallel.summon_full_params(root, recurse=False, writeback=False):
        yield


def clip_fsdp_grad_norm(module, max_norm, algorithm) -> bool:
    """Clip ``module``'s gradients to the total norm ``max_norm`` across every rank's shard, when it trains under
    FSDP and clips by norm (collective: every rank calls it); False otherwise, for Lightning's own clipping."""
    root = fsdp_root(module)
    if root is None or not max_norm or str(getattr(algorithm, "value", algorithm) or "norm") != "norm":
        return False
    root.clip_grad_norm_(max_norm)
    return True


def unsharded_fsdp_units(model) -> list:
    """The FSDP units of ``model`` that keep whole weights (``NO_SHARD``: set so, or one rank); ``[]`` without FSDP."""
    from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy

    return [unit for unit in FullyShardedDataParallel.fsdp_modules(model)
            if getattr(unit, "sharding_strategy", None) == ShardingStrategy.NO_SHARD]


def unregistered_parameters(unit) -> list[str]:
    """Names of the weights an FSDP unit manages that its modules hold as plain tensors, not parameters."""
    handle = unit._handle
    if handle is None:
        return []
    return [fqn for fqn, (name, module, _) in zip(handle.flat_param._fqns, handle.flat_param._param_infos)
            if not isinstance(getattr(module, name, None), torch.nn.Parameter)]


def restore_parameters(model) -> list[str]:
    """Register the original parameters of ``model``'s unsharded FSDP units again; the names that were missing."""
    restored = []
    for unit in unsharded_fsdp_units(model):
        missing = unregistered_parameters(unit)
        if missing and unit._handle._use_orig_params:
            unit._handle._use_sharded_views()
            restored += missing
    return restored


class FrozenFSDPUnitsRestored(Callback):
    """After each backward, unsharded FSDP units hold registered parameters again (see the module docstring)."""

    def on_after_backward(self, trainer, pl_module) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if isinstance(trainer.strategy, FSDPStrategy):
            restore_parameters(trainer.strategy.model)
