"""Say so when a CPU run in float32 could run in bfloat16 at hardware speed.

CPUs with AMX or AVX512-BF16 (Intel Cooper Lake / Sapphire Rapids and later, AMD Zen 4 and later) multiply
bfloat16 matrices several times faster than float32; ``--trainer.precision bf16-mixed`` (``torch.autocast``)
uses them for every matrix product, while casts, attention and elementwise work keep most of a step's time. lit-lora does not switch precision by itself, since a config must train the same numbers on every
machine, but at the start of a float32 CPU fit on such a CPU it prints the flag (see docs/benchmarks.md,
"bfloat16 on a CPU", for what it gains on the training bench).

    >>> native_bf16_flags("flags : fpu sse avx512f avx512_bf16 amx_tile amx_bf16")
    ['amx_bf16', 'avx512_bf16']
    >>> bf16_hint("cpu", "32-true", ["amx_bf16"]).split(":")[0]
    'this CPU computes bfloat16 natively (amx_bf16)'
    >>> bf16_hint("cpu", "bf16-mixed", ["amx_bf16"]) is None
    True
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flag names (Linux)


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


def bf16_hint(accelerator: str, precision: str, flags: list[str]) -> Optional[str]:
    """The hint for a fit on ``accelerator`` at ``precision`` (Lightning's names), or ``None`` when it has none."""
    if accelerator != "cpu" or precision != "32-true" or not flags:
        return None
    return (f"this CPU computes bfloat16 natively ({', '.join(flags)}): --trainer.precision bf16-mixed uses it "
            "for faster matrix products (float32 stays the default, so a config trains the same numbers anywhere)")


def log_bf16_hint(trainer) -> None:
    """Log the hint once, on global rank 0, for a Lightning ``trainer`` about to fit."""
    from lightning.pytorch.accelerators import CPUAccelerator

    accelerator = "cpu" if isinstance(trainer.accelerator, CPUAccelerator) else "other"
    hint = bf16_hint(accelerator, str(trainer.precision), native_bf16_flags() if accelerator == "cpu" else [])
    if hint and trainer.is_global_zero:
        log.info("[lit-lora] %s", hint)
