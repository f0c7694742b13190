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
forward (evaluation and generation batches, float32, a CPU or an older GPU, attention dropout, a sliding window, a
scale the installed PyTorch's kernel cannot take) runs transformers' sdpa with the mask transformers builds for
sdpa, so the model computes what ``sdpa`` computes wherever the kernel does not apply. Models whose attention does
not go through ``AttentionInterface`` (Falcon) cannot use it. On a device the kernel does not run on (a CPU) packed
rows stay stacked, as for sdpa (``flattens_on``). The first packed forward says which path it took: an info line
where the kernel runs, a warning naming the reason where flattened rows fall back to sdpa (a block mask over the
whole flattened batch, slower than stacked sequences); ``PACKED_FORWARDS`` counts both.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections import Counter
from typing import Optional

import torch

from lit_lora.models.attention import HALF

NAME = "torch_varlen"
KERNEL = "varlen kernel"
PACKED_FORWARDS: Counter = Counter()  # attention-layer calls on packed rows, by path: KERNEL or the fallback's reason
SAID: set = set()  # the once-per-process lines already logged
log = logging.getLogger("lit_lora")


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
    """Where ``varlen_attn`` has a kernel: CUDA tensors in half precision on an A100 or newer (compute 8.0)."""
    return query.dtype in HALF and kernel_device(query.device)


def kernel_device(device: torch.device) -> bool:
    """Whether ``device`` is one the kernel runs on: a CUDA GPU of compute 8.0 or newer."""
    return device.type == "cuda" and ampere_or_newer(device.index or 0)


def flattens_on(device: Optional[torch.device]) -> bool:
    """Whether packed rows go to a model on ``device`` as one flattened row for the kernel. Where the kernel cannot
    run they stay stacked, as for ``sdpa`` (a block mask over the whole flattened batch costs more attention), and
    the log says so once; ``None`` (no device known yet): flattened."""
    if device is None or kernel_device(torch.device(device)):
        return True
    device = torch.device(device)
    if "stacked" not in SAID:
        SAID.add("stacked")
        here = (f"compute {'.'.join(map(str, torch.cuda.get_device_capability(device)))}" if device.type == "cuda"
                else device.type)
        log.info("[lit-lora] %s: its kernel needs a CUDA GPU of compute 8.0 or newer, not %s: packed sequences stay "
                 "stacked and run through sdpa", NAME, here)
    return False


@functools.lru_cache(maxsize=None)
def ampere_or_newer(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 0)


def varlen_kernel():
    """``torch.nn.attention.varlen.varlen_attn`` (PyTorch 2.10 and later)."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


@functools.lru_cache(maxsize=8)
def parameters_of(kernel) -> frozenset:
    """The keyword names ``kernel`` takes, read once, not in every layer's forward."""
    return frozenset(inspect.signature(kernel).parameters)


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

    out = None
    # on a device without the kernel packed rows come stacked (flattens_on): a batch of one is no fallback there
    if kernel_device(query.device) and packed_rows(query, key, position_ids):
        refusal = kernel_refusal(module, query, dropout, softcap, sliding_window)
        if refusal is None:
            out = packed_attention(query, key, value, position_ids, scaling)
            refusal = None if out is not None else f"attention scale {scaling:g}, which this torch's kernel cannot take"
        tell(refusal)
    if out is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      sliding_window=sliding_window, softcap=softcap, **kwargs)
    return out, None


def kernel_refusal(module: torch.nn.Module, query: torch.Tensor, dropout: float, softcap: Optional[float],
                   sliding_window: Optional[int]) -> Optional[str]:
    """Why the varlen kernel cannot run this forward of packed rows on its device, or ``None`` where it can."""
    if not kernel_runs_on(query):
        return f"{str(query.dtype).removeprefix('torch.')} attention, where the kernel needs bfloat16 / float16"
    if dropout or softcap or sliding_window:
        return "attention dropout" if dropout else "a logit softcap" if softcap else "a sliding window"
    return None if getattr(module, "is_causal", True) else "attention that is not causal"


def tell(refusal: Optional[str]) -> None:
    """Count this packed forward's path; say it the first time it is taken (once per process and reason). Compiled
    layers (``compile: true``) run neither: their packed forwards go uncounted."""
    if torch.compiler.is_compiling():
        return
    path = refusal or KERNEL
    PACKED_FORWARDS[path] += 1
    if PACKED_FORWARDS[path] > 1:
        return
    if refusal is None:
        log.info("[lit-lora] %s: packed rows through torch.nn.attention.varlen (FlashAttention varlen)", NAME)
    else:
        log.warning("[lit-lora] warning: %s: packed rows run through sdpa with a block mask over the whole flattened "
                    "batch (%s); attn_implementation: sdpa keeps packed sequences stacked and is faster here",
                    NAME, refusal)


def packed_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, position_ids: torch.Tensor,
                     scaling: Optional[float]) -> Optional[torch.Tensor]:
    """Causal attention of every packed row on its own through the varlen kernel, or ``None`` where the installed
    PyTorch's ``varlen_attn`` cannot take this scale. Its signature changed between releases: the first takes
    ``is_causal`` and no scale, with as many key heads as query heads; later ones take ``window_size=(-1, 0)``
    for causal, ``scale`` and (``enable_gqa``) fewer key heads."""
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    kernel = varlen_kernel()
    accepts = parameters_of(kernel)
    options: dict = {"window_size": (-1, 0)} if "window_size" in accepts else {"is_causal": True}
    if "scale" in accepts:
        options["scale"] = scaling
    elif scaling is not None and not math.isclose(scaling, query.shape[-1] ** -0.5):
        return None  # the kernel's default, 1/sqrt(head_dim), is not this model's scale
    # (1, heads, tokens, head_dim) -> (tokens, heads, head_dim): the packed layout varlen kernels read
    q, k, v = (t[0].transpose(0, 1).contiguous() for t in (query, key, value))
    groups = q.shape[1] // k.shape[1]
    if groups > 1 and "enable_gqa" in accepts:
        options["enable_gqa"] = True
    elif groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    (cu_seqlens, _), (longest, _) = prepare_fa_kwargs_from_position_ids(position_ids)
    out = kernel(q, k, v, cu_seqlens, cu_seqlens, int(longest), int(longest), **options)
    return out.unsqueeze(0)
