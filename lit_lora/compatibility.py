"""Which method × strategy × quantisation combinations work, checked when the config is read.

    lit-lora fit --config configs/dialogue/falcon7b_qlora_counselling.yaml --config configs/strategies/deepspeed_zero3.yaml \
        --model.init_args.adapter.init_args.quant_storage float16
    # -> IncompatibleConfig: 4-bit QLoRA under DeepSpeed ZeRO-3 with precision bf16-mixed: every floating-point
    #    parameter is cast to bfloat16, … fix: model.init_args.adapter.init_args.quant_storage: bfloat16 (or unset: uint8)

The rules (each failure names the fix; the DeepSpeed ones are measured by ``tests/test_zero_cpu.py``,
which runs real ZeRO-2 / ZeRO-3 engines on CPU):
  * DeepSpeed and FSDP need CUDA devices here (Lightning's DeepSpeedStrategy refuses other accelerators;
    FSDP on CPU is not supported by these configs): on a CPU use ``configs/strategies/ddp.yaml``.
  * QLoRA 4-bit under DeepSpeed or FSDP with 16-bit precision: both cast every floating-point parameter
    to the precision's dtype, the packed 4-bit weights included, so a floating-point ``quant_storage``
    other than that dtype is rewritten (float32 storage under bf16 crashes; float16 storage under bf16
    trains on a silently wrong model). Under DeepSpeed the default storage (uint8) is never cast.
  * QLoRA 4-bit under FSDP: FSDP flattens each unit's parameters into one tensor of one dtype, so the
    storage dtype (``quant_storage``) must equal the dtype of the rest of the model (``dtype``).
  * QLoRA 8-bit (LLM.int8) under FSDP does not work (int8 weights cannot join a floating-point flat
    parameter): use 4-bit QLoRA with ``quant_storage``, or DeepSpeed / DDP. DeepSpeed ZeRO-3 gathers
    parameters grouped by dtype, so 8-bit and uint8-stored 4-bit bases train under it.
  * Optimizer offload (ZeRO ``offload_optimizer``) runs DeepSpeed's CPU Adam; a bitsandbytes optimizer
    (``adamw_8bit``, ``paged_*``) cannot be offloaded: use ``optim.name: adamw``.
  * A DeepSpeed ``config`` (dict or JSON file) must not carry what the config says elsewhere: with an
    ``optimizer`` or ``scheduler`` section Lightning skips the module's ``configure_optimizers`` (``model.optim``
    ignored), and its ``gradient_clipping`` wins over ``trainer.gradient_clip_val``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Optional

import torch
from lightning.pytorch.accelerators import CUDAAccelerator

from lit_lora.adapters.base import Adapter, AdapterSpec, to_dtype
from lit_lora.cluster.strategy_config import deepspeed_settings, field, strategy_family
from lit_lora.errors import IncompatibleConfig


@dataclass(frozen=True)
class Setup:
    """The facts of a config that decide compatibility (see ``from_config``)."""

    method: str = "lora"                 # AdapterSpec.method: full, lora, qlora, prompt_tuning, …
    mergeable: bool = True               # AdapterSpec.mergeable: LoRA / QLoRA
    bits: Optional[int] = None           # AdapterSpec.bits: 4 or 8 for a quantized base (QLoRA)
    quant_storage: Optional[str] = None  # AdapterSpec.storage_dtype (bnb_4bit_quant_storage)
    model_dtype: str = "auto"
    strategy: str = "auto"               # auto, ddp, fsdp, deepspeed
    zero_stage: Optional[int] = None
    offload_optimizer: bool = False
    optimizer: str = "adamw"
    accelerator: str = "auto"
    cuda_available: bool = False
    precision: Optional[str] = None      # the Trainer's, e.g. bf16-mixed, 16-mixed, 32-true
    merge: bool = False                  # export.merge: LoRA merged into its base at the end of fit
    deepspeed_overrides: tuple = ()      # DeepSpeed config keys that would override the config's settings

    @property
    def quantized(self) -> bool:
        """A bitsandbytes-quantized base (QLoRA, or any adapter whose spec has ``bits``)."""
        return self.bits is not None

    @property
    def precision_dtype(self) -> Optional[str]:
        """The 16-bit dtype that parameters are cast to under ``precision`` (None for 32-bit)."""
        p = str(self.precision or "32")
        return "bfloat16" if p.startswith("bf16") else "float16" if p.startswith("16") else None

    @property
    def strategy_name(self) -> str:
        return f"DeepSpeed ZeRO-{self.zero_stage}" if self.strategy == "deepspeed" else self.strategy.upper()


def problems(s: Setup) -> list[str]:
    """Every reason ``s`` cannot train, each ending with its fix (empty list: compatible)."""
    found = []
    on_cuda = s.cuda_available and s.accelerator in ("cuda", "gpu", "auto")
    if s.strategy in ("deepspeed", "fsdp") and not on_cuda:
        found.append(f"{s.strategy_name} needs CUDA GPUs (accelerator={s.accelerator!r}, CUDA available: "
                     f"{s.cuda_available}); fix: run on GPUs with trainer.accelerator: gpu, or use "
                     "configs/strategies/ddp.yaml (DDP over gloo) on a CPU")
    if s.quantized and s.bits != 8 and s.strategy in ("deepspeed", "fsdp") and s.precision_dtype \
            and _is_float(s.quant_storage) and not _same_dtype(s.quant_storage, s.precision_dtype):
        fix = f"model.init_args.adapter.init_args.quant_storage: {s.precision_dtype}"
        fix += f" and model.init_args.dtype: {s.precision_dtype}" if s.strategy == "fsdp" else " (or unset: uint8)"
        found.append(
            f"4-bit QLoRA under {s.strategy_name} with precision {s.precision}: every floating-point parameter is cast "
            f"to {s.precision_dtype}, which rewrites the packed 4-bit weights stored as {s.quant_storage} (a crash or "
            f"a silently wrong model); fix: {fix}")
    if s.quantized and s.strategy == "fsdp":
        if s.bits == 8:
            found.append("8-bit QLoRA (LLM.int8) does not work under FSDP: int8 weights cannot join a floating-point "
                         "flat parameter; fix: adapter bits: 4 with quant_storage equal to model dtype, or use "
                         "configs/strategies/deepspeed_zero3.yaml / ddp.yaml")
        elif s.quant_storage is None or s.model_dtype in ("auto", None) or not _same_dtype(s.quant_storage,
                                                                                               s.model_dtype):
            dtype = s.precision_dtype or (s.quant_storage if _is_float(s.quant_storage) else None) or (
                s.model_dtype if s.model_dtype not in (None, "auto", "float32") else "bfloat16")
            found.append(
                f"4-bit QLoRA under FSDP flattens the packed 4-bit weights with the rest of each layer into one "
                f"tensor of one dtype, so their storage dtype must equal the model dtype (quant_storage="
                f"{s.quant_storage}, dtype={s.model_dtype}); fix: set model.init_args.adapter.init_args.quant_storage: "
                f"{dtype} and model.init_args.dtype: {dtype}")
    if s.merge and not s.mergeable:
        found.append(f"export.merge: true merges LoRA weights into the base, and {s.method} has none (full "
                     "fine-tuning saves the whole model already; a prompt method's virtual tokens live outside "
                     "the weights); fix: drop export.merge")
    if s.strategy == "fsdp" and s.optimizer != "adamw":
        found.append(f"FSDP gathers each optimizer state into the shape of its parameter when it checkpoints, and "
                     f"the bitsandbytes optimizer {s.optimizer!r} keeps states of other shapes (the first checkpoint "
                     "stops); fix: model.init_args.optim.name: adamw (FSDP shards its states across the GPUs), or "
                     "configs/strategies/deepspeed_zero2.yaml / deepspeed_zero3.yaml")
    if s.strategy == "deepspeed" and s.offload_optimizer and s.optimizer != "adamw":
        found.append(f"ZeRO optimizer offload runs DeepSpeed's CPU Adam and cannot offload the bitsandbytes "
                     f"optimizer {s.optimizer!r}; fix: model.init_args.optim.name: adamw, or a strategy "
                     "without offload (configs/strategies/deepspeed_zero3.yaml)")
    if s.deepspeed_overrides:
        found.append("the DeepSpeed config of trainer.strategy sets " + "; ".join(s.deepspeed_overrides)
                     + ": DeepSpeed's value would silently replace the config's; fix: remove it from the DeepSpeed "
                     "config and set model.init_args.optim / trainer.gradient_clip_val instead")
    return found


def _is_float(dtype_name: Optional[str]) -> bool:
    dtype = to_dtype(dtype_name)
    return isinstance(dtype, torch.dtype) and dtype.is_floating_point


def _same_dtype(a: Optional[str], b: Optional[str]) -> bool:
    """``bf16`` and ``bfloat16`` name one dtype."""
    return to_dtype(a) == to_dtype(b)


def check(s: Setup) -> None:
    """Raise ``IncompatibleConfig`` listing every problem of ``s``."""
    found = problems(s)
    if found:
        raise IncompatibleConfig("this method / strategy / quantisation combination cannot train:\n  - "
                                 + "\n  - ".join(found))


# ---- reading a LightningCLI config ---------------------------------------------------------------
_get = field


def _strategy(strategy: Any) -> tuple[str, Optional[int], bool]:
    """(family, zero stage, optimizer offload) of a Trainer ``strategy`` value (string, class_path config, object)."""
    deepspeed = deepspeed_settings(strategy)
    if deepspeed is not None:
        return "deepspeed", deepspeed.stage, deepspeed.offload_optimizer
    return strategy_family(strategy), None, False


def deepspeed_overrides(strategy: Any, gradient_clip_val: Any) -> tuple[str, ...]:
    """What a DeepSpeed ``config`` (dict, or the path of its JSON file) of ``strategy`` would override: an
    ``optimizer`` / ``scheduler`` section (Lightning then skips ``configure_optimizers``), and a ``gradient_clipping``
    other than ``trainer.gradient_clip_val`` (Lightning fills it from the Trainer only where it is missing)."""
    settings = deepspeed_settings(strategy)
    config = None if settings is None else settings.config
    if config is None:
        return ()
    found = [f"'{key}' (model.init_args.optim ignored: Lightning skips configure_optimizers)"
             for key in ("optimizer", "scheduler") if key in config]
    clip = config.get("gradient_clipping")
    if clip is not None and float(clip) != float(gradient_clip_val or 0.0):
        found.append(f"'gradient_clipping: {clip}' (trainer.gradient_clip_val is {gradient_clip_val})")
    return tuple(found)


def adapter_spec(adapter: Any) -> AdapterSpec:
    """The ``AdapterSpec`` of a config's adapter: an ``Adapter``'s own, or that of the ``class_path`` /
    ``init_args`` entry, instantiated (an adapter holds settings only; nothing is loaded). No adapter: LoRA's,
    the modules' default."""
    if isinstance(adapter, Adapter):
        return adapter.spec()
    class_path = _get(adapter, "class_path") or "lit_lora.adapters.LoRA"
    module_name, _, name = class_path.rpartition(".")
    adapter_class = getattr(importlib.import_module(module_name or "lit_lora.adapters"), name)
    init_args = _get(adapter, "init_args") or {}
    init_args = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args)
    return adapter_class(**init_args).spec()


def from_config(config: Any, cuda_available: Optional[bool] = None) -> Setup:
    """The ``Setup`` of a LightningCLI subcommand config (``cli.config.fit``); the adapter's facts come from its
    ``AdapterSpec``."""
    model_args = _get(_get(config, "model"), "init_args", {})
    spec = adapter_spec(_get(model_args, "adapter"))
    optim = _get(model_args, "optim")
    trainer = _get(config, "trainer")
    family, stage, offload = _strategy(_get(trainer, "strategy", "auto"))
    return Setup(
        method=spec.method,
        mergeable=spec.mergeable,
        bits=spec.bits,
        quant_storage=spec.storage_dtype,
        model_dtype=_get(model_args, "dtype", "auto") or "auto",
        strategy=family,
        zero_stage=stage,
        offload_optimizer=offload,
        optimizer=_get(optim, "name", "adamw") or "adamw",
        accelerator=str(_get(trainer, "accelerator", "auto") or "auto"),
        cuda_available=CUDAAccelerator.is_available() if cuda_available is None else cuda_available,
        precision=None if _get(trainer, "precision") is None else str(_get(trainer, "precision")),
        merge=bool(_get(_get(config, "export"), "merge", False)),
        deepspeed_overrides=deepspeed_overrides(_get(trainer, "strategy"), _get(trainer, "gradient_clip_val")),
    )


def check_config(config: Any, cuda_available: Optional[bool] = None) -> None:
    """``check(from_config(config))`` and the trainer's accumulation: called by the CLI before anything is
    instantiated, and by ``lit-lora sweep`` for every point (``cuda_available``: the nodes it submits to)."""
    check_accumulation(_get(_get(config, "trainer"), "accumulate_grad_batches"))
    check(from_config(config, cuda_available))


def check_accumulation(accumulate: Any) -> None:
    """Refuse ``trainer.accumulate_grad_batches`` below 1 by its key: Lightning reads it only when the training
    loader is built, after the model and the data have loaded."""
    if accumulate is not None and (not isinstance(accumulate, int) or accumulate < 1):
        raise IncompatibleConfig(f"trainer.accumulate_grad_batches must be at least 1, got {accumulate!r}")
