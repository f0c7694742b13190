"""FlashAttention's varlen kernels as CPU reference code, so PyTorch's own ``varlen_attn`` runs on a CPU.

``torch.nn.attention.varlen.varlen_attn`` is Python around a custom operator whose forward and backward call
``aten::_flash_attention_forward`` / ``_backward``, which have CUDA kernels only. Registering these two functions
as their CPU kernels runs everything else as PyTorch ships it: the wrapper's checks, ``window_size`` turned into
``is_causal``, the operator's autograd and what it saves for backward. Only the arithmetic is this file's: each
sequence between ``cu_seqlens`` attends on its own, causally when asked, key heads shared by ``heads // kv_heads``
query heads, in float32::

    calls = []
    with flash_kernel_on_cpu(calls):
        out = varlen_attn(q, k, v, cu_seqlens, cu_seqlens, longest, longest, window_size=(-1, 0))
"""

from __future__ import annotations

import contextlib

import torch


def masked_scores(q: torch.Tensor, k: torch.Tensor, scale: float, left: int, right: int) -> torch.Tensor:
    """(heads, q_len, k_len) scores, ``-inf`` outside the window (``-1``: unbounded; causal is ``right == 0``),
    aligned bottom-right as FlashAttention aligns them."""
    scores = (q @ k.transpose(1, 2)) * scale
    rows = torch.arange(q.shape[1])[:, None] + k.shape[1] - q.shape[1]
    cols = torch.arange(k.shape[1])[None, :]
    allowed = torch.ones_like(scores[0], dtype=torch.bool)
    if right >= 0:
        allowed &= cols <= rows + right
    if left >= 0:
        allowed &= cols >= rows - left
    return scores.masked_fill(~allowed, float("-inf"))


def sequences(cu_q: torch.Tensor, cu_k: torch.Tensor):
    """(q_start, q_end, k_start, k_end) of every sequence."""
    bounds = torch.stack([cu_q[:-1], cu_q[1:], cu_k[:-1], cu_k[1:]], dim=1)
    return [tuple(int(x) for x in row) for row in bounds]


def heads_first(t: torch.Tensor, start: int, end: int, groups: int = 1) -> torch.Tensor:
    """One sequence of a (tokens, heads, head_dim) tensor as float32 (heads * groups, length, head_dim)."""
    return t[start:end].transpose(0, 1).float().repeat_interleave(groups, 0)


def window(is_causal: bool, left, right) -> tuple[int, int]:
    return -1 if left is None else left, 0 if is_causal else (-1 if right is None else right)


def forward(query, key, value, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal, return_debug_mask, *,
            scale=None, window_size_left=None, window_size_right=None, seqused_k=None, alibi_slopes=None,
            block_table=None, num_splits=None, calls=None):
    """``aten::_flash_attention_forward``, varlen form: output (tokens, heads, head_dim) in the input's dtype and
    the log-sum-exp (heads, tokens) in float32, as the CUDA kernel returns them."""
    assert dropout_p == 0.0 and seqused_k is None and alibi_slopes is None and block_table is None
    calls.append(cum_seq_q.tolist())
    scale = scale or query.shape[-1] ** -0.5
    left, right = window(is_causal, window_size_left, window_size_right)
    groups = query.shape[1] // key.shape[1]
    outputs, lses = [], []
    for q0, q1, k0, k1 in sequences(cum_seq_q, cum_seq_k):
        scores = masked_scores(heads_first(query, q0, q1), heads_first(key, k0, k1, groups), scale, left, right)
        lse = torch.logsumexp(scores, -1)
        outputs.append(((scores - lse[..., None]).exp() @ heads_first(value, k0, k1, groups)).transpose(0, 1))
        lses.append(lse)
    empty = torch.empty(0)
    return torch.cat(outputs).to(query.dtype), torch.cat(lses, -1), torch.zeros(2, dtype=torch.uint64), empty, empty


def backward(grad_out, query, key, value, out, logsumexp, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
             rng_state, unused, *, scale=None, window_size_left=None, window_size_right=None):
    """``aten::_flash_attention_backward``: softmax attention's gradient, the key heads' summed over their group."""
    scale = scale or query.shape[-1] ** -0.5
    left, right = window(is_causal, window_size_left, window_size_right)
    groups = query.shape[1] // key.shape[1]
    dq, dk, dv = (torch.zeros(t.shape) for t in (query, key, value))
    for q0, q1, k0, k1 in sequences(cum_seq_q, cum_seq_k):
        q, k, v = heads_first(query, q0, q1), heads_first(key, k0, k1, groups), heads_first(value, k0, k1, groups)
        o, g = heads_first(out, q0, q1), heads_first(grad_out, q0, q1)
        p = masked_scores(q, k, scale, left, right).softmax(-1)
        ds = p * (g @ v.transpose(1, 2) - (g * o).sum(-1, keepdim=True))
        dq[q0:q1] = (ds @ k * scale).transpose(0, 1)
        dk[k0:k1] = (ds.transpose(1, 2) @ q * scale).unflatten(0, (-1, groups)).sum(1).transpose(0, 1)
        dv[k0:k1] = (p.transpose(1, 2) @ g).unflatten(0, (-1, groups)).sum(1).transpose(0, 1)
    return dq.to(query.dtype), dk.to(key.dtype), dv.to(value.dtype)


@contextlib.contextmanager
def flash_kernel_on_cpu(calls: list):
    """``forward`` and ``backward`` as the CPU kernels of FlashAttention's operators while inside; every forward's
    ``cu_seqlens`` (as a list) goes to ``calls``."""
    library = torch.library.Library("aten", "IMPL")
    try:
        library.impl("_flash_attention_forward", lambda *args, **kwargs: forward(*args, **kwargs, calls=calls),
                     "CPU")
        library.impl("_flash_attention_backward", backward, "CPU")
        yield calls
    finally:
        library._destroy()
