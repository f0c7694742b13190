"""The attention a model trains with when ``model.init_args.attn_implementation`` names none.

transformers picks sdpa. On a CUDA GPU with ``flash_attn`` installed and half-precision compute, FlashAttention 2
is the faster kernel, and with ``data.init_args.packing: true`` its varlen path keeps packed rows apart from their
``position_ids`` alone, with no block mask (``lit_lora.models.packing_support.flattens``). Anywhere else (a CPU, float32,
a model class without it, remote code) transformers keeps its own choice; a named implementation always wins::

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from lit_lora.models.attention import default_attention
    config = AutoConfig.from_pretrained("lit_lora/assets/tiny-llama")
    default_attention(config, AutoModelForCausalLM, {"dtype": torch.bfloat16}, "cpu")   # None: transformers' choice
"""

from __future__ import annotations

from typing import Any, Optional

import torch

HALF = (torch.bfloat16, torch.float16)


def default_attention(config: Any, auto_model_class: Any, load_kwargs: dict, device_type: str) -> Optional[str]:
    """``flash_attention_2`` where it runs and the settings name no attention; else ``None``."""
    if load_kwargs.get("attn_implementation") or load_kwargs.get("trust_remote_code") or device_type != "cuda":
        return None
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return None
    try:
        model_class = auto_model_class._model_mapping[type(config)]
    except (AttributeError, KeyError):
        return None
    if not getattr(model_class, "_supports_flash_attn", False):
        return None
    return "flash_attention_2" if compute_dtype(config, load_kwargs) in HALF else None


def compute_dtype(config: Any, load_kwargs: dict) -> torch.dtype:
    """The dtype attention runs in: a 4-bit base's compute dtype, else the load dtype, else the checkpoint's."""
    from lit_lora.architectures import config_dtype

    quantization = load_kwargs.get("quantization_config")
    compute = getattr(quantization, "bnb_4bit_compute_dtype", None) if quantization is not None else None
    return compute or load_kwargs.get("dtype") or config_dtype(config)
