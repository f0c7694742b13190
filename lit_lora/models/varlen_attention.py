"""``attn_implementation: torch_varlen``: packed rows through PyTorch's own FlashAttention varlen kernel.

FlashAttention's varlen path keeps packed rows apart with no mask at all (one flattened row, the row boundaries as
``cu_seqlens``), but transformers reaches it only through the ``flash-attn`` package, whose wheels must match the
CUDA, torch and Python of each cluster. PyTorch ships the same kernel (FlashAttention 2 behind
``torch.nn.attention.varlen.varlen_attn``: CUDA, A100 or newer, bfloat16 / float16), which this registers with
transformers' ``AttentionInterface``::

    lit-lora fit --config configs/<exp>.yaml --data.init_args.packing true \\
        --model.init_args.attn_implementation torch_varlen

Packed rows then arrive as one flattened row (``packing_support.flattens``) whose ``position_ids`` restart at every
row; each attention layer turns the restarts into ``cu_seqlens`` (transformers'
``prepare_fa_kwargs_from_position_ids``, as its FlashAttention path does) and runs the kernel causally. Every other
forward (evaluation and generation batches, float32, a CPU, attention dropout, a sliding window) runs transformers'
sdpa with the mask transformers builds for sdpa, so the model computes what ``sdpa`` computes wherever the kernel
does not apply. Models whose attention does not go through ``AttentionInterface`` (Falcon) cannot use it.
"""

from __future__ import annotations

from typing import Optional

import torch

NAME = "torch_varlen"
HALF = (torch.bfloat16, torch.float16)


def require(config, auto_model_class) -> None:
    """Refuse a model whose attention does not go through ``AttentionInterface`` before it loads (transformers
    would fail with a bare ``KeyError`` in its first forward), then ``register``."""
    from lit_lora.errors import IncompatibleConfig

    try:
        model_class = auto_model_class._model_mapping[type(config)]
    except (AttributeError, KeyError):  # remote code: its own class, tried as it is
        model_class = None
    if model_class is not None and not getattr(model_class, "_supports_attention_backend", False):
        raise IncompatibleConfig(
            f"model.init_args.attn_implementation: {NAME} runs through transformers' AttentionInterface, which "
            f"{model_class.__name__} does not use; use sdpa (or flash_attention_2 with the flash-attn package)")
    register()


def register() -> None:
    """Make ``attn_implementation="torch_varlen"`` known to transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    try:
        varlen_kernel()
    except ImportError as err:
        from lit_lora.errors import IncompatibleConfig

        raise IncompatibleConfig(f"model.init_args.attn_implementation: {NAME} needs torch.nn.attention.varlen "
                                 f"(PyTorch 2.10 or later), not in torch {torch.__version__}") from err
    AttentionInterface.register(NAME, varlen_or_sdpa_attention)
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


def kernel_runs_on(query: torch.Tensor) -> bool:
    """Where ``varlen_attn`` has a kernel: CUDA tensors in half precision."""
    return query.is_cuda and query.dtype in HALF


def varlen_kernel():
    """``torch.nn.attention.varlen.varlen_attn`` (PyTorch 2.10 and later)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def packed_rows(query: torch.Tensor, key: torch.Tensor, position_ids: Optional[torch.Tensor]) -> bool:
    """Whether this forward is one flattened row of packed rows: batch of one, no cached keys before the queries,
    and ``position_ids`` that restart (transformers' own test for packed input, ``_is_packed_sequence``)."""
    from transformers.modeling_flash_attention_utils import _is_packed_sequence

    if query.shape[0] != 1 or key.shape[2] != query.shape[2] or position_ids is None:
        return False
    return bool(_is_packed_sequence(position_ids.reshape(1, -1), batch_size=1))


def varlen_or_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: Optional[torch.Tensor], dropout: float = 0.0,
                             scaling: Optional[float] = None, sliding_window: Optional[int] = None,
                             softcap: Optional[float] = None, position_ids: Optional[torch.Tensor] = None,
                             **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: ``query`` (batch, heads, length, head_dim), ``key`` / ``value``
    (batch, kv_heads, length, head_dim) in; (batch, length, heads, head_dim) out, no attention weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if (not kernel_runs_on(query) or dropout or softcap or sliding_window
            or not getattr(module, "is_causal", True) or not packed_rows(query, key, position_ids)):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, softcap=softcap, **kwargs)
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    (cu_seqlens, _), (longest, _) = prepare_fa_kwargs_from_position_ids(position_ids)
    longest = int(longest)
    heads, kv_heads = query.shape[1], key.shape[1]
    # (1, heads, tokens, head_dim) -> (tokens, heads, head_dim): the packed layout varlen kernels read
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    out = varlen_kernel()(q, k, v, cu_seqlens, cu_seqlens, longest, longest, scale=scaling, window_size=(-1, 0),
                      enable_gqa=kv_heads != heads)
    return out.unsqueeze(0), None
