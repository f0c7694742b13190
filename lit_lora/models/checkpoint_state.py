"""What a lit-lora checkpoint keeps of the model: the trainable weights only, under the names a state dict uses.

A LoRA checkpoint of an 8B model is megabytes, not gigabytes, because the frozen base is reloaded from
``model_name_or_path``. The trainable weights are picked by name, and the names must be the state dict's:
under FSDP ``named_parameters()`` runs through the wrappers (``layers.0._fsdp_wrapped_module.self_attn…``)
while the full state dict is clean (``layers.0.self_attn…``). Picking by the wrapped names kept nothing, and a
resume then started from the initial adapter without a word. So the wrappers' segments are removed, and a
state dict that lacks a trainable weight is refused when the checkpoint is written::

    >>> state_name("model.layers.0._fsdp_wrapped_module.self_attn.q_proj.lora_A.default.weight")
    'model.layers.0.self_attn.q_proj.lora_A.default.weight'
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from lit_lora.cluster.sharding import FSDP_SEGMENT
from lit_lora.errors import InputError

log = logging.getLogger("lit_lora")

WRAPPER_SEGMENTS = (FSDP_SEGMENT, "_checkpoint_wrapped_module.")  # FSDP units, activation checkpointing


def state_name(parameter_name: str) -> str:
    """A parameter's name as a full state dict has it: without the FSDP and activation-checkpointing wrappers."""
    for segment in WRAPPER_SEGMENTS:
        parameter_name = parameter_name.replace(segment, "")
    return parameter_name


def trainable_names(module: torch.nn.Module) -> set[str]:
    """State-dict names of ``module``'s trainable parameters."""
    return {state_name(name) for name, p in module.named_parameters() if p.requires_grad}


def trainable_only(state_dict: dict, keep: set[str], method: str, writes: bool = True) -> dict:
    """``state_dict`` cut to the ``keep`` weights. On the rank that ``writes`` the checkpoint, raises when some of
    those are missing: the checkpoint would resume from other weights. (The other ranks' state dicts may hold
    nothing, or only buffers: FSDP gathers full weights to the writing rank alone.)"""
    missing = sorted(keep - set(state_dict)) if writes else []
    if missing:
        example = next(iter(state_dict), "nothing")
        raise RuntimeError(f"the {method} checkpoint being written lacks {len(missing)} trainable weights (first: "
                           f"{missing[0]}; the state dict has {example}{' …' if len(state_dict) > 1 else ''}): "
                           "a resume from it would start from other weights")
    return {k: v for k, v in state_dict.items() if k in keep}


class CheckpointWeightsMismatch(InputError, RuntimeError):
    """A checkpoint's trainable weights are not the ones this module's adapter configuration trains."""


def saved_trainable_names(checkpoint: dict) -> Optional[set[str]]:
    """The trainable weights a checkpoint holds. DeepSpeed and FSDP load the weights themselves and hand over the
    checkpoint without ``state_dict``: there the names recorded at save time stand in for it."""
    saved = checkpoint.get("state_dict", checkpoint.get("lit_lora", {}).get("trainable_keys"))
    return set(saved) if saved is not None else None


def other_shapes(state_dict: dict, module: torch.nn.Module) -> dict[str, tuple[torch.Size, torch.Size]]:
    """The ``state_dict`` tensors whose shape differs from ``module``'s trainable parameter of that name:
    {name: (saved shape, parameter shape)}. A parameter held as a shard (ZeRO-3's empty placeholder, FSDP's
    flattened view) is not compared: its own shape is not the weight's."""
    found = {}
    for name, p in module.named_parameters():
        saved = state_dict.get(state_name(name))
        if p.requires_grad and isinstance(saved, torch.Tensor) and p.numel() > 0 and saved.dim() == p.dim() \
                and not hasattr(p, "ds_shape") and saved.shape != p.shape:
            found[state_name(name)] = (saved.shape, p.shape)
    return found


def check_loaded(checkpoint: dict, module: torch.nn.Module, method: str, data_settings: dict) -> None:
    """Raise when the checkpoint lacks one of ``module``'s trainable weights, holds trained weights it has no
    place for (Lightning loads it with ``strict=False``, which would drop them: a LoRA on fewer layers, or no
    adapter, would evaluate as if it were the trained model), or holds them in other shapes (another LoRA ``r``:
    PyTorch's wall of size mismatches); warn when it was trained on other data settings than ``data_settings``
    (the train-overlap check then sees today's training split)."""
    keep = trainable_names(module)
    saved = saved_trainable_names(checkpoint)
    missing, unexpected = (sorted(keep - saved), sorted(saved - keep)) if saved is not None else ([], [])
    reshaped = other_shapes(checkpoint.get("state_dict") or {}, module)
    if missing or unexpected or reshaped:
        written_by = checkpoint.get("lit_lora", {}).get("method")
        problems = ([f"lacks {len(missing)} trainable weights of this {method} model (first: {missing[0]})"]
                    if missing else []) + ([f"holds {len(unexpected)} trained weights this {method} model has no "
                                            f"place for (first: {unexpected[0]})"] if unexpected else [])
        if reshaped:
            name, (theirs, ours) = next(iter(reshaped.items()))
            problems.append(f"holds {len(reshaped)} weights in other shapes than this {method} model's (first: "
                            f"{name}: {list(theirs)} in the checkpoint, {list(ours)} here)")
        raise CheckpointWeightsMismatch(
            f"checkpoint {' and '.join(problems)}: it was written by a {written_by or 'differently configured'} "
            "model with another adapter configuration (method, target_modules, r, modules_to_save); use the "
            "config.yaml of its run")
    trained_on = checkpoint.get("lit_lora", {}).get("data") or {}
    changed = {k: (v, data_settings.get(k)) for k, v in trained_on.items() if data_settings and v != data_settings.get(k)}
    if changed:
        detail = ", ".join(f"{k}: trained with {a!r}, now {b!r}" for k, (a, b) in changed.items())
        log.warning("[lit-lora] the data settings differ from the ones this checkpoint was trained with (%s): "
                    "the train-overlap check sees today's training split, not the checkpoint's", detail)


def write_pretrained(model, out, state_dict, is_peft: bool, tokenizer=None) -> None:
    """``save_pretrained`` of the model (``state_dict``: the gathered weights under ZeRO-3 / FSDP, ``None``:
    its own) and of the tokenizer into ``out``; a peft adapter under the names peft gives outside any wrapper.
    Its files get the umask's mode, as the run's other files (safetensors writes 0600)."""
    from lit_lora.cluster.checkpoint_io import files_follow_umask
    from lit_lora.cluster.sharding import peft_keyed, without_fsdp_names

    out.mkdir(parents=True, exist_ok=True)
    if state_dict is None:
        model.save_pretrained(out)
    elif is_peft:  # keys as peft finds them in the (FSDP-wrapped) model, then without the wrapper
        model.save_pretrained(out, state_dict=peft_keyed(model, state_dict))
        without_fsdp_names(out)
    else:
        model.save_pretrained(out, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    files_follow_umask(out)
