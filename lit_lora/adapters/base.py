"""The adapter interface every fine-tuning method implements, and the parameter report.

An ``Adapter`` turns a freshly loaded transformers model into the model that trains:
``quantization_config()`` says how to load the base (``None`` = unquantized), ``wrap()`` freezes
what must stay frozen and attaches the peft layers. Methods are chosen in YAML by class path::

    model:
      init_args:
        adapter:
          class_path: lit_lora.adapters.LoRA
          init_args: {r: 8, alpha: 16, target_modules: all-linear}
"""

from __future__ import annotations

import difflib
import re
from typing import Optional, Sequence, Union

import torch
from torch import nn

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


class Adapter:
    """Base class of every fine-tuning method (full, LoRA, QLoRA, prompt-based)."""

    method: str = "base"

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
    if isinstance(targets, str):  # peft treats a plain string as a full-match regex
        if not any(re.fullmatch(targets, n) for n in names):
            raise ValueError(f"{what} regex {targets!r} matches no module of {type(model).__name__}")
        return
    leaf_names = sorted({n.rsplit(".", 1)[-1] for n in module_names(model)})
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            close = difflib.get_close_matches(target, leaf_names, n=5, cutoff=0.3) or leaf_names[:10]
            raise ValueError(
                f"{what}: {target!r} matches no module of {type(model).__name__}; "
                f"closest module names: {', '.join(close)}"
            )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) counted the way peft's ``get_nb_trainable_parameters`` counts them.

    A bitsandbytes 4-bit weight packs two values per byte of its storage dtype, so its
    ``numel()`` is multiplied back to the real number of weights; DeepSpeed ZeRO-3 partitions
    report ``ds_numel``.
    """
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
