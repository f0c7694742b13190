"""The adapter interface every fine-tuning method implements, and the parameter report.

An ``Adapter`` turns a freshly loaded transformers model into the model that trains:
``quantization_config()`` says how to load the base (``None`` = unquantized), ``wrap()`` freezes
what must stay frozen and attaches the peft layers, ``spec()`` says what the method is (``AdapterSpec``: the
compatibility rules and the memory estimate read it, never class names). Methods are chosen in YAML by class path::

    model:
      init_args:
        adapter:
          class_path: lit_lora.adapters.LoRA
          init_args: {r: 8, alpha: 16, target_modules: all-linear}

    >>> from lit_lora.adapters import QLoRA
    >>> QLoRA(bits=4, quant_storage="bfloat16").spec().storage_dtype
    'bfloat16'
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from lit_lora.errors import InputError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def to_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """'bfloat16' -> torch.bfloat16; None and 'auto' stay as they are (transformers understands 'auto')."""
    if name is None or name == "auto":
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}") from None


class InvalidAdapterSetting(InputError, ValueError):
    """An adapter setting outside its range, named when the config is read (before any weights load)."""


def require(adapter: str, name: str, value: Any, ok: bool, expected: str) -> None:
    """Raise ``InvalidAdapterSetting`` naming the setting unless ``ok``."""
    if not ok:
        raise InvalidAdapterSetting(f"model.init_args.adapter ({adapter}): {name} must be {expected}, got {value!r}")


@dataclass(frozen=True)
class AdapterSpec:
    """What a fine-tuning method is, for the code that plans around it (``Adapter.spec()``).

    Attributes:
        method: ``full``, ``none``, ``lora``, ``qlora``, ``prompt_tuning``, ``p_tuning``, ``prefix_tuning`` …
        bits: 4 or 8 when the base is loaded bitsandbytes-quantized, else ``None``.
        storage_dtype: Storage dtype of packed 4-bit weights (``bnb_4bit_quant_storage``; ``None``: uint8).
        compute_dtype: Dtype the quantized layers compute in (``None``: the model's).
        double_quant: The 4-bit quantization constants are quantized too.
        virtual_tokens: Tokens a prompt method puts in front of every row (0: none).
        kbit_checkpointing: peft's ``prepare_model_for_kbit_training`` turns on gradient checkpointing.
        mergeable: Its trained weights fold into the base (LoRA's ``merge_and_unload``: ``export.merge``,
            ``lit-lora merge``).
    """

    method: str
    bits: Optional[int] = None
    storage_dtype: Optional[str] = None
    compute_dtype: Optional[str] = None
    double_quant: bool = False
    virtual_tokens: int = 0
    kbit_checkpointing: bool = False
    mergeable: bool = False

    @property
    def quantized(self) -> bool:
        return self.bits is not None


class Adapter:
    """Base class of every fine-tuning method (full, LoRA, QLoRA, prompt-based)."""

    method: str = "base"

    def spec(self) -> AdapterSpec:
        """What this method is (see ``AdapterSpec``); subclasses fill in their fields."""
        return AdapterSpec(method=self.method)

    def with_trained_modules(self, names: Sequence[str]) -> "Adapter":
        """This adapter training ``names`` (e.g. a new classification head) in full as well: a copy with them in
        ``modules_to_save`` for a method that has it; unchanged for one that trains everything or nothing."""
        return self

    def quantization_config(self):
        """A ``transformers.BitsAndBytesConfig`` to load the base with, or ``None``."""
        return None

    def check_base(self, config, model_class: type, task_type: str, **kwargs) -> None:
        """Raise before any weights are loaded when this method cannot train ``model_class`` built from ``config``."""

    def wrap(self, model: nn.Module, task_type: str) -> nn.Module:
        """Return the trainable model built around ``model`` (peft's ``TaskType`` name in ``task_type``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"


def module_names(model: nn.Module) -> list[str]:
    """Fully qualified names of the modules that own parameters directly (the ones peft can target)."""
    return [name for name, module in model.named_modules()
            if name and any(True for _ in module.parameters(recurse=False))]


def check_target_modules(model: nn.Module, targets: Union[str, Sequence[str], None], what: str = "target_modules"):
    """Fail when a target name matches no module, listing the closest real names.

    peft only errors when *no* name matches; a typo next to a valid name is silently ignored
    and trains fewer layers than asked for. peft matches ``name == target`` or ``name.endswith('.' + target)``.
    """
    if targets is None or targets == "all-linear":
        return
    names = [n for n, _ in model.named_modules() if n]
    setting = f"model.init_args.adapter.init_args.{what}"
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n in module_names(model)})
    if isinstance(targets, str):  # peft treats a plain string as a full-match regex
        if not any(re.fullmatch(targets, n) for n in names):
            raise InvalidAdapterSetting(f"{setting}: the regex {targets!r} matches no module of "
                                        f"{type(model).__name__}; its module names include "
                                        f"{', '.join(leaf_names[:10])}")
        return
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            close = difflib.get_close_matches(target, leaf_names, n=5, cutoff=0.3) or leaf_names[:10]
            raise InvalidAdapterSetting(f"{setting}: {target!r} matches no module of {type(model).__name__}; "
                                        f"closest module names: {', '.join(close)}")


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total): peft's own ``get_nb_trainable_parameters`` for a peft model, and the same rule for a
    model without an adapter (full fine-tuning).

    A bitsandbytes 4-bit weight packs two values per byte of its storage dtype, so its
    ``numel()`` is multiplied back to the real number of weights; DeepSpeed ZeRO-3 partitions
    report ``ds_numel``.
    """
    if hasattr(model, "get_nb_trainable_parameters"):  # a PeftModel
        return model.get_nb_trainable_parameters()
    trainable = total = 0
    for param in model.parameters():
        n = param.numel()
        if n == 0 and hasattr(param, "ds_numel"):
            n = param.ds_numel
        if param.__class__.__name__ == "Params4bit":
            n = n * 2 * (param.element_size() if hasattr(param, "element_size") else 1)
        total += n
        if param.requires_grad:
            trainable += n
    return trainable, total


def parameter_report(model: nn.Module) -> dict:
    """Trainable, total and the trainable percentage, ready to print and to log."""
    trainable, total = count_parameters(model)
    return {"trainable_params": trainable, "total_params": total,
            "trainable_pct": 100.0 * trainable / max(total, 1)}


def format_parameter_report(report: dict) -> str:
    return (f"trainable params: {report['trainable_params']:,} || all params: {report['total_params']:,}"
            f" || trainable%: {report['trainable_pct']:.4f}")
