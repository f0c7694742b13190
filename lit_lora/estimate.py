"""``lit-lora estimate``: parameters and GPU memory of a config, without weights or a download.

The config is parsed by the same LightningCLI parser as ``lit-lora fit`` (so any lit-lora YAML works,
fragments and ``--key value`` overrides included); only the model module is instantiated, which loads
nothing. The full-size architecture is built on the meta device from ``lit_lora.architectures`` (or a
local / hub config), quantized on the meta device exactly as ``from_pretrained`` would, wrapped by the
configured adapter with peft, and counted the way peft counts. Memory comes from ``lit_lora.memory``.

    lit-lora estimate --config configs/gemma2b_qlora_python_codes.yaml --gpu_memory_gib 24
    lit-lora estimate --config configs/demo.yaml --model.init_args.model_name_or_path microsoft/phi-2
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from lit_lora.adapters.base import count_parameters, to_dtype
from lit_lora.architectures import HEADS, config_dtype, load_config, lookup, meta_model
from lit_lora.memory import GIB, MemoryEstimate, Shape, activation_bytes, inference_activation_bytes, \
    optimizer_state_bytes, quant_constant_bytes, tensor_bytes
from lit_lora.models.quantizable import plain_linear_layers

LOAD_ONLY_KWARGS = ("trust_remote_code", "dtype", "attn_implementation", "quantization_config", "device_map")


# ---- the config ---------------------------------------------------------------------------------------
def parse_config(argv: list[str]):
    """The parsed (not instantiated) config of ``lit-lora fit <argv>``."""
    from lit_lora.cli import LitLoraCLI

    class ParseOnly(LitLoraCLI):
        def instantiate_classes(self) -> None:  # keep the parsed namespace; build nothing
            pass

        def _set_seed(self) -> None:  # nothing runs, nothing to seed
            pass

        def before_instantiate_classes(self) -> None:  # hardware checks are for the machine that trains
            pass

    with warnings.catch_warnings():  # LightningCLI warns when args= is given from a command line
        warnings.filterwarnings("ignore", message=".*args parameter is intended")
        return ParseOnly(args=argv, run=False).config


def instantiate_model(cfg) -> Any:
    """The LightningModule of the config (its ``__init__`` loads no weights; ``configure_model`` does)."""
    from jsonargparse import ArgumentParser

    from lit_lora.models.base import FineTuneModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(FineTuneModule, "model")
    return parser.instantiate(parser.parse_object({"model": cfg.model.as_dict()})).model


# ---- the model on the meta device ---------------------------------------------------------------------
def head_of(module) -> str:
    for head, auto_class in HEADS.items():
        if module.auto_model_class is auto_class:
            return head
    raise ValueError(f"{type(module).__name__} loads {module.auto_model_class}, which estimate cannot build")


def quantize_on_meta(model: nn.Module, quantization_config) -> list[nn.Module]:
    """Swap linear layers for bitsandbytes ones as ``from_pretrained`` does, with packed meta weights.

    transformers' own quantizer chooses the layers (``preprocess_model``); the weights are then given the
    shape and dtype bitsandbytes stores them in: 4-bit values packed two a byte into ``quant_storage``
    (``(ceil(n / 2 / itemsize), 1)``), 8-bit values as int8. Returns the quantized layers.
    """
    import bitsandbytes as bnb
    from transformers.quantizers import AutoHfQuantizer

    quantizer = AutoHfQuantizer.from_config(quantization_config, pre_quantized=False)
    quantizer.preprocess_model(model=model, device_map={"": "meta"})
    layers = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    for layer in layers:
        weight = layer.weight
        if isinstance(layer, bnb.nn.Linear4bit):
            storage = quantization_config.bnb_4bit_quant_storage
            packed = math.ceil(weight.numel() / (2 * torch.empty((), dtype=storage).element_size()))
            weight.data = torch.empty((packed, 1), dtype=storage, device="meta")
        else:
            weight.data = torch.empty(weight.shape, dtype=torch.int8, device="meta")
    quantizer.postprocess_model(model)
    return layers


@dataclass
class Built:
    """The adapted meta model and what the memory estimate needs to know about it."""

    model: nn.Module
    config: Any
    head: str
    trainable: int
    total: int
    quantized_values: int = 0
    quantized_rows: int = 0
    notes: list[str] = field(default_factory=list)


def prepare_classifier(module, config, data_class_path: Optional[str]) -> None:
    """What ``SequenceClassifierModule.configure_model`` sets before loading: label names (the CLI links them
    from the datamodule, whose class defines them), the head modules (trained in full via ``modules_to_save``
    and kept out of quantization)."""
    if not hasattr(module, "head_modules"):
        return
    import copy
    import importlib

    from lit_lora.models.classifier import head_module_names

    if not module.label_names and data_class_path:
        package, _, name = data_class_path.rpartition(".")
        module.label_names = list(getattr(getattr(importlib.import_module(package), name), "label_names", None) or [])
    if not module.label_names:
        raise ValueError(f"{type(module).__name__}: no label_names in the model config nor on the datamodule "
                         f"{data_class_path}; set model.init_args.label_names")
    config.num_labels = len(module.label_names)
    module.head_modules = head_module_names(meta_model(config, "sequence_classification"))
    if hasattr(module.adapter, "modules_to_save"):
        module.adapter = copy.copy(module.adapter)
        module.adapter.modules_to_save = sorted(set(module.adapter.modules_to_save or []) | set(module.head_modules))


def build(module, data_class_path: Optional[str] = None) -> Built:
    """The configured model at full size on the meta device, adapted as ``configure_model`` adapts it."""
    config = load_config(module.model_name_or_path, module.trust_remote_code)
    head = head_of(module)
    prepare_classifier(module, config, data_class_path)
    for key, value in module.load_kwargs().items():  # e.g. num_labels of a classification head
        if key not in LOAD_ONLY_KWARGS:
            setattr(config, key, value)
    if getattr(module, "tokenizer", None) is None and getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = getattr(config, "eos_token_id", None)
    dtype = config_dtype(config) if module.dtype_name == "auto" else to_dtype(module.dtype_name)
    quantization = module.adapter.quantization_config()
    with plain_linear_layers() if quantization is not None else contextlib.nullcontext():
        model = meta_model(config, head, dtype)  # built as configure_model builds a quantized base
    quantized_values = quantized_rows = 0
    notes = []
    if quantization is not None:
        for layer in quantize_on_meta(model, quantization):
            quantized_values += layer.in_features * layer.out_features
            quantized_rows += layer.out_features
        if not quantized_values:
            notes.append(f"WARNING: bitsandbytes quantizes no layer of {type(model).__name__}; "
                         "the base stays at full precision (as it would in lit-lora fit)")
    if module.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    with torch.device("meta"):
        model = module.adapter.wrap(model, module.task_type)
    from peft import PeftModel

    if isinstance(model, PeftModel):
        trainable, total = model.get_nb_trainable_parameters()
    else:
        trainable, total = count_parameters(model)
    return Built(model, config, head, trainable, total, quantized_values, quantized_rows, notes)


# ---- memory ----------------------------------------------------------------------------------------------
def data_settings(cfg) -> dict:
    """Batch size and sequence lengths from the data section, whatever the datamodule calls them."""
    data = cfg.data.init_args.as_dict() if hasattr(cfg.data.init_args, "as_dict") else dict(cfg.data.init_args)
    batch = data.get("batch_size") or 1
    source = data.get("max_source_length") or data.get("max_length") or 512
    target = data.get("max_target_length") or source
    return {"batch_size": batch, "seq": source, "target_seq": target}


def lora_input_values(model: nn.Module, shape: Shape) -> int:
    """Values per token and layer that LoRA dropout keeps: the dropped-out input of each adapted layer
    (averaged over the layers; a LoRA layer without dropout keeps nothing extra)."""
    total = 0
    for module in model.modules():
        dropout = getattr(module, "lora_dropout", None)
        if isinstance(dropout, nn.ModuleDict) and any(isinstance(d, nn.Dropout) and d.p > 0
                                                      for d in dropout.values()):
            total += module.in_features
    return total // max(shape.layers + shape.decoder_layers, 1)


def memory_estimate(built: Built, module, cfg, batch: int, seq: int, target_seq: int,
                    overhead_gib: float) -> tuple[MemoryEstimate, dict]:
    """The memory parts of the run, and the assumptions behind them (printed with the numbers)."""
    model = built.model
    weights = sum(tensor_bytes(p) for p in {id(p): p for p in model.parameters()}.values())
    weights += sum(tensor_bytes(b) for b in model.buffers())
    adapter = module.adapter
    quant = 0
    if built.quantized_values:
        quant = quant_constant_bytes(built.quantized_values, adapter.bits, adapter.double_quant,
                                     built.quantized_rows)
    trainable = [p for p in model.parameters() if p.requires_grad]
    gradients = sum(tensor_bytes(p) for p in trainable)
    optimizer = optimizer_state_bytes(trainable, module.optim.name)

    precision = str(cfg.trainer.precision or "32-true")
    compute = getattr(adapter, "compute_dtype", None)
    value_bytes = 2 if "16" in precision else (torch.empty((), dtype=to_dtype(compute)).element_size()
                                               if compute else model_compute_bytes(model))
    checkpointing = bool(module.gradient_checkpointing or getattr(adapter, "gradient_checkpointing", False)
                         and built.quantized_values)
    shape = Shape.from_config(built.config, gated_mlp=is_gated(model))
    virtual = getattr(adapter, "num_virtual_tokens", 0) or 0
    eager = (module.attn_implementation or getattr(built.config, "_attn_implementation", None)) == "eager"
    if trainable:
        acts = activation_bytes(shape, batch, seq + virtual, value_bytes, checkpointing,
                                lora_input_values(model, shape), target_seq, eager,
                                logits=built.head in ("causal", "seq2seq"))
    else:  # nothing trains (NoAdapter): a forward pass keeps no activations for backward
        acts = inference_activation_bytes(shape, batch, seq + virtual, value_bytes,
                                          logits=built.head in ("causal", "seq2seq"))
    estimate = MemoryEstimate(weights, quant, gradients, optimizer, acts, int(overhead_gib * GIB))
    assumptions = {"batch": batch, "seq": seq + virtual, "target_seq": target_seq if shape.decoder_layers else None,
                   "activation_bytes": value_bytes, "gradient_checkpointing": checkpointing,
                   "attention": "eager (scores kept)" if eager else "SDPA (no s x s scores kept)",
                   "optimizer": module.optim.name, "precision": precision}
    return estimate, assumptions


def model_compute_bytes(model: nn.Module) -> int:
    floats = [p for p in model.parameters() if p.is_floating_point()]
    return floats[0].element_size() if floats else 4


def is_gated(model: nn.Module) -> bool:
    """A gated (GLU) MLP: Llama / Gemma ``gate_proj``, T5 v1.1 ``wi_0``."""
    return any(name.endswith(("gate_proj", "wi_0")) for name, _ in model.named_modules())


# ---- the command -------------------------------------------------------------------------------------------
def base_model(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def gib(n: float) -> str:
    return f"{n / GIB:.2f} GiB"


def report(module, built: Built, estimate: MemoryEstimate, assumptions: dict, gpu_gib: float) -> str:
    arch = lookup(module.model_name_or_path)
    source = "lit-lora architecture registry" if arch else "model config"
    pct = 100.0 * built.trainable / max(built.total, 1)
    a = assumptions
    lines = [
        f"model: {module.model_name_or_path} ({type(base_model(built.model)).__name__} from the {source},"
        " built on the meta device)",
        f"method: {module.adapter!r}",
        f"trainable params: {built.trainable:,} || all params: {built.total:,} || trainable%: {pct:.4f}",
        *built.notes,
        "",
        "GPU memory estimate (one device):",
        f"  weights            {gib(estimate.weights):>12}   parameters + buffers at their storage dtype",
    ]
    if estimate.quant_constants:
        lines.append(f"  quant constants    {gib(estimate.quant_constants):>12}   bitsandbytes absmax / scales "
                     f"({built.quantized_values:,} quantized values)")
    lines += [
        f"  gradients          {gib(estimate.gradients):>12}   one per trainable value",
        f"  optimizer state    {gib(estimate.optimizer):>12}   {a['optimizer']}: two moments per trainable value",
    ]
    for part, n in estimate.activations.items():
        lines.append(f"  {'activations/' + part:<22}{gib(n):>9}")
    lines += [
        f"  CUDA overhead      {gib(estimate.overhead):>12}   context + allocator slack (assumed)",
        f"  total              {gib(estimate.total):>12}",
        f"fits in {gpu_gib:g} GiB: {'yes' if estimate.fits(gpu_gib * GIB) else 'no'}",
        "",
        f"assumptions: batch {a['batch']} per device, every row padded to {a['seq']} tokens"
        + (f" (target {a['target_seq']})" if a["target_seq"] else "")
        + f", {a['activation_bytes']}-byte activations (precision {a['precision']}),"
        f" gradient checkpointing {'on' if a['gradient_checkpointing'] else 'off'}, {a['attention']};"
        " gradient accumulation adds no memory; formulas in lit_lora/memory.py",
    ]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(
        prog="lit-lora estimate", description=__doc__.splitlines()[0],
        epilog="Every other argument (--config, --model.init_args.…, --data.init_args.…) is parsed as by lit-lora fit.")
    parser.add_argument("--gpu_memory_gib", type=float, default=80.0, help="GPU memory to check the total against")
    parser.add_argument("--batch_size", type=int, help="per-device batch size (default: data.batch_size)")
    parser.add_argument("--seq_len", type=int, help="tokens per row (default: the data's max length)")
    parser.add_argument("--overhead_gib", type=float, default=1.0, help="CUDA context and allocator slack")
    args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(rest)
    module = instantiate_model(cfg)
    built = build(module, cfg.data.class_path if cfg.get("data") else None)
    data = data_settings(cfg)
    batch = args.batch_size or data["batch_size"]
    seq = args.seq_len or data["seq"]
    target = args.seq_len or data["target_seq"]
    estimate, assumptions = memory_estimate(built, module, cfg, batch, seq, target, args.overhead_gib)
    print(report(module, built, estimate, assumptions, args.gpu_memory_gib))


if __name__ == "__main__":
    main()
