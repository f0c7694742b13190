"""``torch.compile`` on the transformer layers only (PyTorch's "regional compilation").

``model.init_args.compile: true`` compiles each layer class the model names in ``_no_split_modules`` (Llama's
``LlamaDecoderLayer`` …) in place (``nn.Module.compile``), LoRA's layers inside them included. Every layer of a
class shares one compiled graph, so the compile costs one layer's, not the model's; ``dynamic=True`` keeps the
batches' changing lengths from recompiling it. In place, the parameter names stay as they are, so checkpoints,
saved adapters and resumes do not change. The embeddings and the LM head stay eager: the label-only head
(``label_only_loss.py``) catches the head's input with a hook. Generation runs eagerly
(``evaluation/generation.py``): its cache-carrying decode steps would recompile the layers at every new length.

Off by default: the first steps pay the compile (tens of seconds for a 30M-parameter Llama on a 2-core CPU, less
once inductor's on-disk cache holds the kernels), and ``docs/benchmarks.md`` ("torch.compile on a CPU") measures
1.09x the tokens/s after it there (``bench/train_throughput.py``: ``lit-lora compile``, ``HF grouped compile``)::

    >>> from lit_lora.models import CausalLMModule
    >>> module = CausalLMModule("lit_lora/assets/tiny-llama", compile=True)
    >>> module.configure_model()
    >>> sorted({type(layer).__name__ for layer in compiled_layers(module.model)})
    ['LlamaDecoderLayer']
"""

from __future__ import annotations

import logging

from torch import nn

from lit_lora.cluster.sharding import layer_classes
from lit_lora.errors import IncompatibleConfig

log = logging.getLogger("lit_lora")

# strategies that wrap or partition the layers' parameters after configure_model: untested with compiled layers
UNSUPPORTED_STRATEGIES = ("FSDP", "DeepSpeed", "ModelParallel")


def check_strategy(strategy: str) -> None:
    """Refuse a strategy (the Trainer's strategy class name) that compiled layers do not run under: before the
    weights load, so that a refused run stops in seconds."""
    if any(name in strategy for name in UNSUPPORTED_STRATEGIES):
        raise IncompatibleConfig(f"model.init_args.compile: true is supported on one device and under DDP, not "
                                 f"under {strategy}; drop it, or train with the ddp strategy")


def compile_layers(model: nn.Module, strategy: str = "") -> int:
    """Compile ``model``'s transformer layers in place; the number compiled. ``strategy``: the Trainer's class name."""
    check_strategy(strategy)
    try:
        classes = layer_classes(model)
    except ValueError as error:
        raise IncompatibleConfig(f"model.init_args.compile: {type(model).__name__} names no transformer layer "
                                 f"class to compile ({error})") from None
    layers = [module for module in model.modules() if type(module) in classes]
    for layer in layers:
        layer.compile(dynamic=True)
    log.info("[lit-lora] torch.compile: %d %s layers (the first steps at new shapes compile them)",
             len(layers), "/".join(sorted(cls.__name__ for cls in classes)))
    return len(layers)


def compiled_layers(model: nn.Module) -> list[nn.Module]:
    """The submodules of ``model`` compiled in place (``nn.Module.compile``)."""
    return [module for module in model.modules() if getattr(module, "_compiled_call_impl", None) is not None]

