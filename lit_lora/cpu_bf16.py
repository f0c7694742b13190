"""Say so when a CPU fit in float32 could run in bfloat16 at hardware speed.

CPUs with AMX or AVX512-BF16 (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later) multiply
bfloat16 matrices several times faster than float32; ``--trainer.precision bf16-mixed`` (``torch.autocast``)
uses them for every matrix product, while casts, attention and elementwise work keep most of a step's time.
On the training bench (hidden size 512) that is 1.22× the tokens/s; on a narrow model (hidden 64) autocast's
casts cost more than the products gain. lit-lora does not switch precision by itself, since a config must
train the same numbers on every machine: at the start of a float32 CPU fit of a model at least
``MIN_HIDDEN_SIZE`` wide on such a CPU, ``Bf16Hint`` prints the flag (docs/benchmarks.md, "bfloat16 on a CPU").

    >>> native_bf16_flags("flags : fpu sse avx512f avx512_bf16 amx_tile amx_bf16")
    ['amx_bf16', 'avx512_bf16']
    >>> bf16_hint("cpu", "32-true", ["amx_bf16"], hidden_size=4096).split(":")[0]
    'this CPU computes bfloat16 natively (amx_bf16)'
    >>> bf16_hint("cpu", "bf16-mixed", ["amx_bf16"], hidden_size=4096) is None
    True
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from lightning.pytorch import Callback
from lightning.pytorch.accelerators import CPUAccelerator

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flag names (Linux)
MIN_HIDDEN_SIZE = 512  # the narrowest model bf16-mixed was measured to speed up (bench/train_throughput.py)


def native_bf16_flags(cpuinfo: Optional[str] = None) -> list[str]:
    """The bfloat16 matrix flags of this CPU from ``/proc/cpuinfo`` text (read when not given); none off Linux."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text()
        except OSError:
            return []
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags.update(value.split())
    return [flag for flag in NATIVE_BF16 if flag in flags]


def bf16_hint(accelerator: str, precision: str, flags: list[str], hidden_size: Optional[int]) -> Optional[str]:
    """The hint for a fit on ``accelerator`` at ``precision`` (Lightning's names) of a model ``hidden_size`` wide,
    or ``None`` when there is nothing to gain."""
    if accelerator != "cpu" or precision != "32-true" or not flags:
        return None
    if hidden_size is None or hidden_size < MIN_HIDDEN_SIZE:
        return None
    return (f"this CPU computes bfloat16 natively ({', '.join(flags)}): --trainer.precision bf16-mixed uses it "
            "for faster matrix products (float32 stays the default, so a config trains the same numbers anywhere)")


def hidden_size_of(model) -> Optional[int]:
    """The width of a transformers model (its text part for a multimodal one), or ``None`` when it has none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "hidden_size", None)


class Bf16Hint(Callback):
    """Logs the hint once, on global rank 0, when a fit starts (the model is built by then)."""

    def on_fit_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not isinstance(trainer.accelerator, CPUAccelerator):
            return
        hint = bf16_hint("cpu", str(trainer.precision), native_bf16_flags(),
                         hidden_size_of(getattr(pl_module, "model", None)))
        if hint:
            log.info("[lit-lora] %s", hint)
