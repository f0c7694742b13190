"""Which models can train on packed rows, and how their attention reads them (the model side of packing).

``lit_lora.data.packing`` builds the packed batches; whether a model keeps packed rows apart depends on the
model: a causal LM of a verified architecture with rotary positions, whose attention restarts at every
``position_ids`` 0, and no prompt-learning adapter that puts virtual tokens before the rows::

    >>> from transformers import GPT2Config, LlamaConfig
    >>> model_packing_refusal(LlamaConfig()) is None
    True
    >>> model_packing_refusal(GPT2Config())[:43]
    'packing: true keeps rows apart only where t'
    >>> flattens("flash_attention_2"), flattens("torch_varlen"), flattens("torch_varlen", torch.device("cpu"))
    (True, True, False)
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from lit_lora.adapters.prompt import _PromptLearning
from lit_lora.models.varlen_attention import NAME, flattens_on

# model types whose packed rows were checked to match the rows run alone (tests/test_packing.py);
# a new one is added here after that test passes for it
PACKING_ARCHITECTURES = ("llama", "gemma", "phi", "falcon")


def flattens(attn_implementation: Optional[str], device: Optional[torch.device] = None) -> bool:
    """FlashAttention (the flash-attn package's, or PyTorch's through ``torch_varlen``:
    ``lit_lora.models.varlen_attention``) finds packed rows from ``position_ids`` only in a batch of one row
    (transformers' ``_is_packed_sequence``), so its batches are flattened; sdpa / eager stack the packed sequences,
    which keeps their attention at ``sequences × max_length²`` instead of ``(sequences × max_length)²``, and so does
    ``torch_varlen`` on a ``device`` its kernel does not run on (a CPU: it is sdpa there)."""
    if attn_implementation == NAME:
        return flattens_on(device)
    return "flash" in str(attn_implementation or "")


def model_packing_refusal(config: Any, adapter: Any = None) -> Optional[str]:
    """Why a model (its config) and adapter cannot train on packed rows, or ``None`` when they can."""
    model_type = getattr(config, "model_type", "?")
    if getattr(config, "is_encoder_decoder", False):
        return f"packing: true needs a causal LM; {model_type} is an encoder-decoder model"
    if model_type not in PACKING_ARCHITECTURES:
        return (f"packing: true keeps rows apart only where that was verified ({', '.join(PACKING_ARCHITECTURES)}: "
                "PACKING_ARCHITECTURES in lit_lora/models/packing_support.py, tests/test_packing.py), "
                f"not {model_type}")
    if getattr(config, "alibi", False):  # verified with rotary positions, which restart with position_ids
        return (f"packing: true is verified for {model_type} with rotary positions; this config uses ALiBi "
                "(alibi: true), whose positions come from the attention mask, not position_ids")
    if isinstance(adapter, _PromptLearning):  # peft drops position_ids (prompt / p-tuning) or adds a KV prefix
        return (f"packing: true does not work with {adapter.method}: peft puts virtual tokens before the rows and "
                "drops position_ids or adds a KV-cache prefix, so packed rows would attend to each other")
    return None
