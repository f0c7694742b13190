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

The other way round, a CPU without those kernels (AVX2 only: many cluster login and older compute nodes,
laptops) multiplies bfloat16 and float16 matrices on a slow fallback, 40–86× float32's time on a 2-core AMD
EPYC (``python -c "from lit_lora.cpu_bf16 import matmul_slowdown as m; import torch; print(m(torch.bfloat16))"``).
A fit that computes in such a dtype there, through ``bf16-mixed`` or a base model whose weights are stored in
bfloat16 (``model.init_args.dtype: auto`` keeps a checkpoint's), looks hung; ``Bf16Hint`` then warns with the
measured factor and the flags that avoid it:

    >>> slow_precision_warning(torch.bfloat16, 85.0, ["--trainer.precision bf16-mixed"]).split(";")[0]
    'this CPU multiplies bfloat16 matrices 85× slower than float32 (measured at start)'
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Optional

import torch
from lightning.pytorch import Callback
from lightning.pytorch.accelerators import CPUAccelerator

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
NATIVE_BF16 = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flag names (Linux)
MIN_HIDDEN_SIZE = 512  # the narrowest model bf16-mixed was measured to speed up (bench/train_throughput.py)
SLOW_FACTOR = 3.0  # a half-precision product this many times float32's time is a fallback, not a kernel
HALF_PRECISIONS = {"bf16-mixed": torch.bfloat16, "bf16-true": torch.bfloat16,  # trainer.precision, normalised
                   "16-mixed": torch.float16, "16-true": torch.float16}


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


def matmul_slowdown(dtype: torch.dtype, size: int = 256, repeats: int = 3, clock=time.perf_counter) -> float:
    """How many times longer a ``size``-square matrix product takes in ``dtype`` than in float32 on this CPU
    (best of ``repeats`` each, float32 first in every round): about 1 or less with oneDNN's kernels, tens
    without. ``clock`` is read before and after each product."""
    best = {torch.float32: float("inf"), dtype: float("inf")}
    for _ in range(repeats):
        for each in best:
            a, b = torch.ones(size, size, dtype=each), torch.ones(size, size, dtype=each)
            started = clock()
            torch.mm(a, b)
            best[each] = min(best[each], clock() - started)
    return best[dtype] / max(best[torch.float32], 1e-9)


def half_dtypes_in_use(precision: str, module: torch.nn.Module) -> dict[torch.dtype, list[str]]:
    """The 16-bit dtypes a fit computes matrix products in, each with what brings it in: the precision setting,
    or weights stored in it."""
    found: dict[torch.dtype, list[str]] = {}
    if precision in HALF_PRECISIONS:
        found.setdefault(HALF_PRECISIONS[precision], []).append(f"--trainer.precision {precision}")
    stored = {p.dtype for p in module.parameters()} & {torch.bfloat16, torch.float16}
    for dtype in sorted(stored, key=str):
        found.setdefault(dtype, []).append(f"weights stored in {str(dtype).removeprefix('torch.')} "
                                           "(model.init_args.dtype)")
    return found


def slow_precision_warning(dtype: torch.dtype, slowdown: float, reasons: list[str]) -> str:
    name = str(dtype).removeprefix("torch.")
    return (f"this CPU multiplies {name} matrices {slowdown:.0f}× slower than float32 (measured at start); this run "
            f"computes in {name} ({'; '.join(reasons)}), so each step takes far longer than in float32. On this "
            "machine use --trainer.precision 32-true --model.init_args.dtype float32")


class Bf16Hint(Callback):
    """Logs, once, on global rank 0 when a CPU run starts (the model is built by then): the bf16-mixed hint on a
    CPU with native bfloat16, or the warning for a run in a 16-bit dtype this CPU multiplies slowly."""

    def __init__(self):
        self.done = False

    def on_fit_start(self, trainer, pl_module) -> None:
        self.advise(trainer, pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self.advise(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self.advise(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self.advise(trainer, pl_module)

    def advise(self, trainer, pl_module) -> None:
        if self.done or not trainer.is_global_zero or not isinstance(trainer.accelerator, CPUAccelerator):
            return
        self.done = True
        precision = str(trainer.precision)
        for dtype, reasons in half_dtypes_in_use(precision, pl_module).items():
            slowdown = matmul_slowdown(dtype)
            if slowdown >= SLOW_FACTOR:
                log.warning("[lit-lora] warning: %s", slow_precision_warning(dtype, slowdown, reasons))
        if trainer.state.fn != "fit":
            return
        hint = bf16_hint("cpu", precision, native_bf16_flags(), hidden_size_of(getattr(pl_module, "model", None)))
        if hint:
            log.info("[lit-lora] %s", hint)
