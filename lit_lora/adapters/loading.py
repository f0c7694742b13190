"""Load a saved peft adapter strictly: every tensor the model expects, and no other, or an error naming them.

peft's own loaders only warn about missing adapter tensors (``PeftModel.from_pretrained``) or say nothing
(``set_peft_model_state_dict``, whose ``missing_keys`` also lists every frozen base weight); a truncated
or mismatched ``adapter_model.safetensors`` then evaluates or merges as a partly untrained adapter.
Every lit-lora adapter load goes through this module::

    from transformers import AutoModelForCausalLM
    from lit_lora.adapters.loading import load_peft_model
    model = load_peft_model(AutoModelForCausalLM.from_pretrained("base/"), "runs/demo/adapter")
    # -> AdapterMismatchError: runs/demo/adapter: 42 of 56 adapter tensors missing from the saved adapter …
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn


class AdapterMismatchError(ValueError):
    """A saved adapter's tensors are not the ones the model built from its config expects."""


def expected_adapter_keys(model: nn.Module, adapter_name: Optional[str] = None) -> set[str]:
    """Names the adapter's tensors have in a saved adapter (``get_peft_model_state_dict``, as peft saves them)."""
    from peft import get_peft_model_state_dict

    name = adapter_name or getattr(model, "active_adapter", "default")
    return set(get_peft_model_state_dict(model, adapter_name=name))


def check_adapter_keys(model: nn.Module, weights: Mapping[str, torch.Tensor], source: str | Path,
                       adapter_name: Optional[str] = None) -> None:
    """Raise ``AdapterMismatchError`` naming the first few missing and unexpected tensors of ``weights``."""
    expected = expected_adapter_keys(model, adapter_name)
    missing = sorted(expected - set(weights))
    unexpected = sorted(set(weights) - expected)
    if not missing and not unexpected:
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} of {len(expected)} adapter tensors missing from the saved adapter "
                        f"(first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s) the model has no place for "
                        f"(first: {', '.join(unexpected[:3])})")
    raise AdapterMismatchError(
        f"{source}: {'; '.join(problems)}. The adapter was saved from another adapter configuration "
        "(target_modules, r, method) or base model than this config builds, or its weights file is incomplete: "
        "use the config the adapter was trained with, or save the adapter again")


def load_adapter_weights(model: nn.Module, adapter_dir: str | Path) -> None:
    """Put the weights of a peft adapter directory into the (already wrapped) peft ``model``, strictly."""
    from peft import set_peft_model_state_dict
    from peft.utils import load_peft_weights

    weights = load_peft_weights(str(adapter_dir), device="cpu")
    check_adapter_keys(model, weights, adapter_dir)
    set_peft_model_state_dict(model, weights, adapter_name=getattr(model, "active_adapter", "default"))


def load_peft_model(base: nn.Module, adapter_dir: str | Path, **kwargs) -> nn.Module:
    """``PeftModel.from_pretrained(base, adapter_dir)`` that fails on missing or unexpected adapter tensors."""
    import warnings

    from peft import PeftModel
    from peft.utils import load_peft_weights

    with warnings.catch_warnings():  # peft warns about missing keys; the error below names them
        warnings.filterwarnings("ignore", message="Found missing adapter keys")
        model = PeftModel.from_pretrained(base, str(adapter_dir), **kwargs)
    check_adapter_keys(model, load_peft_weights(str(adapter_dir), device="cpu"), adapter_dir)
    return model
