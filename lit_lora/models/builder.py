"""The one model builder: a module's settings -> its base model -> the adapted model that trains.

Training (``FineTuneModule.configure_model``) and ``lit-lora estimate`` build through the same three steps; only
where the weights come from differs (``meta``: the full-size architecture on the meta device, no weights, no
download, quantized as ``from_pretrained`` would quantize it):

1. ``architecture(module, meta)``: the model's config with the module's settings in it; the module derives what
   it needs from it (``prepare_architecture``: a classifier's label count and head modules, which its adapter
   then trains and quantization skips), and the adapter may refuse the architecture (``check_base``);
2. ``load_base(module, config, meta)``: ``from_pretrained`` with the module's ``load_kwargs`` (dtype, attention,
   quantization config), or the same architecture from the config on the meta device;
3. ``adapt(module, base, meta)``: pad token, gradient checkpointing, then ``adapter.wrap`` (peft).

    from lit_lora.adapters import QLoRA
    from lit_lora.models import CausalLMModule
    from lit_lora.models.builder import adapt, architecture, load_base
    module = CausalLMModule("google/gemma-2b", adapter=QLoRA(r=16))
    config = architecture(module, meta=True)
    model = adapt(module, load_base(module, config, meta=True), meta=True)  # GemmaForCausalLM, 4-bit, LoRA on
                                              # every linear layer; no weights (what ``lit-lora estimate`` builds)
    module.configure_model()                  # the same steps with the real weights (what fit does)
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch
from torch import nn

from lit_lora.adapters.base import to_dtype
from lit_lora.cluster.sharding import outside_zero3_init
from lit_lora.model_source import resolve_model_path
from lit_lora.models import varlen_attention
from lit_lora.models.quantizable import plain_linear_layers

log = logging.getLogger("lit_lora")


def architecture(module, meta: bool = False):
    """The model's config with the module's settings (step 1 of the module doc); checked by the adapter.

    ``meta``: read by ``lit_lora.architectures.load_config`` (a local directory, the registry of reference
    models, then the hub), so that a full-size model is known without its weights."""
    if meta:
        from lit_lora.architectures import load_config

        config = load_config(module.model_name_or_path, module.trust_remote_code)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(resolve_model_path(module.model_name_or_path),
                                            trust_remote_code=module.trust_remote_code)
    module.prepare_architecture(config)
    for key, value in module.architecture_kwargs().items():  # e.g. num_labels of a classification head
        if key != "trust_remote_code":
            setattr(config, key, value)
    if module.attn_implementation == varlen_attention.NAME:
        varlen_attention.require(config, module.auto_model_class)
    with outside_zero3_init():  # a probe model of the adapter's must not be partitioned
        module.adapter.check_base(config, module.auto_model_class, module.task_type,
                                  trust_remote_code=module.trust_remote_code)
    return config


def load_base(module, config=None, meta: bool = False) -> nn.Module:
    """The base model of the module's ``load_kwargs`` (step 2): pretrained weights, or ``config``'s architecture
    on the meta device (``meta``), quantized the same way either way."""
    kwargs = module.load_kwargs()
    quantization = kwargs.get("quantization_config")
    with plain_linear_layers() if quantization is not None else contextlib.nullcontext():
        if not meta:
            path = resolve_model_path(module.model_name_or_path)
            return module.auto_model_class.from_pretrained(path, **with_default_attention(module, path, kwargs))
        if getattr(module, "tokenizer", None) is None and getattr(config, "pad_token_id", None) is None:
            config.pad_token_id = getattr(config, "eos_token_id", None)
        from lit_lora.architectures import meta_model

        model = meta_model(config, module.auto_model_class,
                           None if module.dtype_name == "auto" else to_dtype(module.dtype_name))
    if quantization is not None:
        quantize_on_meta(model, quantization)
    return model


def with_default_attention(module, path: str, kwargs: dict) -> dict:
    """``kwargs`` with FlashAttention 2 added where ``models.attention.default_attention`` picks it for this rank."""
    device = module._load_device()
    device_type = "cuda" if isinstance(device, int) else str(device)
    if device_type != "cuda" or kwargs.get("attn_implementation"):
        return kwargs
    from transformers import AutoConfig

    from lit_lora.models.attention import default_attention

    config = AutoConfig.from_pretrained(path, trust_remote_code=module.trust_remote_code)
    attention = default_attention(config, module.auto_model_class, kwargs, device_type)
    return {**kwargs, "attn_implementation": attention} if attention else kwargs


def gradient_checkpointing_on(module) -> bool:
    """``model.init_args.gradient_checkpointing`` where it is set; unset (``None``), the adapter's default: on
    for QLoRA (its ``gradient_checkpointing``, as peft's ``prepare_model_for_kbit_training``), off otherwise."""
    if module.gradient_checkpointing is not None:
        return bool(module.gradient_checkpointing)
    return bool(module.adapter.spec().kbit_checkpointing)


def is_checkpointing(model: nn.Module) -> bool:
    """Whether transformers' gradient checkpointing is on in ``model`` (a peft model asks its base)."""
    current = "is_activation_checkpointing"  # transformers >= 5.x; the old name warns
    return bool(getattr(model, current if hasattr(model, current) else "is_gradient_checkpointing", False))


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    """Turn transformers' gradient checkpointing on (non-reentrant, no KV cache) or off."""
    if on:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x; the old name warns
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    elif is_checkpointing(model):
        if hasattr(model, "activation_checkpointing_disable"):
            model.activation_checkpointing_disable()
        else:
            model.gradient_checkpointing_disable()


def adapt(module, model: nn.Module, meta: bool = False) -> nn.Module:
    """The trainable model around ``model`` (step 3): pad token, gradient checkpointing as
    ``gradient_checkpointing_on`` says, the adapter's ``wrap``."""
    tokenizer = getattr(module, "tokenizer", None)
    if tokenizer is not None and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    checkpointing = gradient_checkpointing_on(module)
    if checkpointing and module.gradient_checkpointing is None and not meta:
        log.info("[lit-lora] gradient checkpointing: on, QLoRA's default "
                 "(model.init_args.gradient_checkpointing: false turns it off)")
    _set_checkpointing(model, checkpointing)
    with torch.device("meta") if meta else contextlib.nullcontext():
        wrapped = module.adapter.wrap(model, module.task_type)
    if not checkpointing:
        _set_checkpointing(model, False)  # peft's k-bit preparation turns it on by itself; the module decides
    return wrapped


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
    layers = quantized_layers(model)
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


def quantized_layers(model: nn.Module) -> list[nn.Module]:
    """The bitsandbytes linear layers of ``model`` (4- and 8-bit), peft-wrapped or not."""
    import bitsandbytes as bnb

    return [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
