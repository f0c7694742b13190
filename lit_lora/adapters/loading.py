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

import contextlib
import json
import logging
from pathlib import Path
from typing import Mapping, Optional

import torch
from torch import nn

from lit_lora.errors import InputError

log = logging.getLogger("lit_lora")


class AdapterMismatchError(InputError, ValueError):
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
    warn_on_another_base(adapter_dir, model)
    name = getattr(model, "active_adapter", "default")
    if model.peft_config[name].is_prompt_learning:
        saved_prompt_encoder(model, name)
    with shapes_named(adapter_dir, model):
        set_peft_model_state_dict(model, weights, adapter_name=name)


def saved_prompt_encoder(model: nn.Module, adapter_name: str) -> None:
    """Turn the adapter's prompt encoder into the one a saved prompt loads into, as ``PeftModel.from_pretrained``
    builds it (``inference_mode``). peft saves a P-tuning or projected prefix-tuning prompt as its encoder's
    output: put into the training encoder it would run through the MLP / LSTM a second time (wrong outputs, no
    error), or not fit the prefix projection's smaller input table at all."""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import PeftType

    config = model.peft_config[adapter_name]
    config.inference_mode = True
    if config.peft_type not in (PeftType.P_TUNING, PeftType.PREFIX_TUNING):
        return  # prompt tuning saves the embedding table itself, which its encoder is already
    table = model.prompt_encoder[adapter_name].embedding.weight
    encoder = PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type](config)
    model.prompt_encoder[adapter_name] = encoder.to(device=table.device, dtype=table.dtype).requires_grad_(False)


def load_peft_model(base: nn.Module, adapter_dir: str | Path, **kwargs) -> nn.Module:
    """``PeftModel.from_pretrained(base, adapter_dir)`` that fails on missing or unexpected adapter tensors."""
    import warnings

    from peft import PeftModel
    from peft.utils import load_peft_weights

    warn_on_another_base(adapter_dir, base)
    with warnings.catch_warnings(), shapes_named(adapter_dir, base):  # peft warns about missing keys; the error
        warnings.filterwarnings("ignore", message="Found missing adapter keys")  # below names them
        model = PeftModel.from_pretrained(base, str(adapter_dir), **kwargs)
    check_adapter_keys(model, load_peft_weights(str(adapter_dir), device="cpu"), adapter_dir)
    return model


@contextlib.contextmanager
def shapes_named(adapter_dir: str | Path, model: nn.Module):
    """torch's "size mismatch" (one line per tensor, under a traceback) as one ``AdapterMismatchError``."""
    loaded = base_name(model) or "this model"
    try:
        yield
    except RuntimeError as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip().startswith("size mismatch")]
        if not lines:
            raise
        raise AdapterMismatchError(
            f"{adapter_dir}: {len(lines)} adapter tensors have other shapes than {loaded} gives them (first: "
            f"{lines[0].removeprefix('size mismatch for ')}): the adapter was trained on another base model; use "
            "the config.yaml of its run") from None
    except ValueError as err:  # peft's NoMatchingPeftModuleError: an adapter of another architecture's layers
        if "not found in the base model" not in str(err):
            raise
        raise AdapterMismatchError(f"{adapter_dir}: {str(err).split('. ')[0]} ({loaded}): the adapter was trained "
                                   "on another base model; use the config.yaml of its run") from None


def warn_on_another_base(adapter_dir: str | Path, model: nn.Module) -> None:
    """Say so when the adapter was trained on another base than ``model`` loaded (``adapter_config.json``'s
    ``base_model_name_or_path``): tensors of the same shapes load without error onto any model of the family."""
    config_file = Path(adapter_dir) / "adapter_config.json"
    trained_on = json.loads(config_file.read_text()).get("base_model_name_or_path") if config_file.is_file() else None
    loaded = base_name(model)
    if not trained_on or not loaded or same_model(trained_on, loaded):
        return
    log.warning("[lit-lora] %s was trained on %s (its adapter_config.json) and is loaded onto %s: what follows is of "
                "that pairing; use the config.yaml of the adapter's run if it is not meant", adapter_dir, trained_on,
                loaded)


def base_name(model: nn.Module) -> Optional[str]:
    """The name or path the model was loaded from (``from_pretrained``'s argument)."""
    return getattr(getattr(model, "config", None), "_name_or_path", None)


def same_model(a: str, b: str) -> bool:
    """The same name, or two paths to one directory."""
    return a == b or (Path(a).expanduser().exists() and Path(b).expanduser().exists()
                      and Path(a).expanduser().resolve() == Path(b).expanduser().resolve())
