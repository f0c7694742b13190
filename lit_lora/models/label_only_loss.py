"""A causal LM's loss with the LM head run on the labelled positions only, a chunk at a time.

A causal LM's forward runs its head on every position (logits ``[B, T, V]``), and the float32
copy of those logits, its log-softmax and their gradient dominate the peak memory of a fine-tuning
step at a large vocabulary (4,096 positions × 128k vocabulary = 2 GiB per float32 copy), although
the prompt positions (label -100) never enter the loss. ``FineTuneModule.loss_terms`` instead:

1. runs the model with its head fed no positions (``head_input``): the head's input, the final
   hidden states after whatever the architecture does before the head, is kept;
2. takes the rows whose next-token label is set (position t predicts label t + 1);
3. sums the cross-entropy over them chunk by chunk (``linear_cross_entropy_sum``): a custom autograd
   function computes each chunk's logits in float32, its loss and its gradients with respect to the
   hidden rows, the head weight and bias in the forward, as Liger's fused linear cross-entropy does,
   so no chunk's logits outlive the chunk and the backward only scales the stored gradients.

The result is ``token_loss.summed_loss`` of the full logits (same sum, same gradients, in float32)::

    import torch
    import torch.nn.functional as F
    from lit_lora.models.label_only_loss import linear_cross_entropy_sum
    hidden = torch.randn(10, 16, requires_grad=True)
    weight = torch.randn(100, 16, requires_grad=True)
    targets = torch.tensor([1, 2, -100, 4, 5, 6, 7, -100, 9, 10])
    loss = linear_cross_entropy_sum(hidden, weight, None, targets, chunk_size=3)
    reference = F.cross_entropy(hidden @ weight.T, targets, reduction="sum")
    torch.testing.assert_close(loss, reference)

``find_label_only_head`` decides per model whether this applies; where it does not (an
architecture not known to apply nothing after its head, an adapter or quantization on the head, a
sharded head weight) the module keeps the full-logits path.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Optional

import torch
import torch.nn.functional as F
from torch import nn

from lit_lora.token_loss import IGNORE_INDEX

# transformers model types whose causal-LM forward applies nothing to the LM head's output, except
# Gemma 2 / 3's final logit softcapping (read from the config and applied here)
LABEL_ONLY_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                                    "phi", "phi3", "falcon"})
LOGITS_PER_CHUNK = 2 ** 25  # elements of one chunk's float32 logits (128 MiB): 1,024 positions at a 32k vocabulary


@dataclass(frozen=True)
class LabelOnlyHead:
    """The LM head to run on labelled positions, and the softcap the model applies to its logits."""

    linear: nn.Linear
    softcap: Optional[float] = None


def _transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a peft wrapper (the model itself otherwise)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def find_label_only_head(model: nn.Module, placed: bool = True) -> tuple[Optional[LabelOnlyHead], str]:
    """The head to run on labelled positions only, or ``None``; and why, for the log. ``placed=False``: the model
    is built on the meta device (``lit-lora estimate``), so where its head weight lives is not checked."""
    base = _transformers_model(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if getattr(config, "is_encoder_decoder", False) or model_type not in LABEL_ONLY_MODEL_TYPES:
        return None, f"model type {model_type!r} is not one known to apply nothing after its LM head"
    get_head = getattr(base, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    if type(head) is not nn.Linear:  # a LoRA layer, a peft ModulesToSaveWrapper, a bitsandbytes layer …
        return None, f"its LM head is a {type(head).__name__}, not a plain torch.nn.Linear"
    weight = head.weight
    if placed and (hasattr(weight, "ds_id") or weight.device.type == "meta" or hasattr(head, "_hf_hook")
                   or type(weight.data).__name__ == "DTensor"
                   or tuple(weight.shape) != (head.out_features, head.in_features)):
        return None, "its LM head weight is sharded or offloaded"
    softcap = getattr(config, "final_logit_softcapping", None)
    return LabelOnlyHead(head, float(softcap) if softcap else None), f"{model_type} with a plain nn.Linear head"


@dataclass
class HeadInput:
    """What ``head_input`` caught: the hidden states the head was given in one forward."""

    calls: list = field(default_factory=list)

    @property
    def hidden(self) -> torch.Tensor:
        if len(self.calls) != 1:
            raise RuntimeError(f"the LM head ran {len(self.calls)} times in one forward; expected once")
        return self.calls[0]


@contextlib.contextmanager
def head_input(head: nn.Module) -> Iterator[HeadInput]:
    """Inside, ``head`` is fed no positions (its logits are ``[B, 0, V]``) and its input is kept.

    Hooking the head's input, rather than running the decoder body, leaves the model's own forward
    (peft's virtual tokens and prefixes, packing's ``position_ids``, the final norm) as it is.
    """
    caught = HeadInput()

    def feed_nothing(module, args, kwargs):
        hidden = args[0] if args else kwargs.pop("input")
        caught.calls.append(hidden)
        return (hidden.narrow(-2, 0, 0), *args[1:]), kwargs

    handle = head.register_forward_pre_hook(feed_nothing, with_kwargs=True)
    try:
        yield caught
    finally:
        handle.remove()


def summed_label_only_loss(hidden: torch.Tensor, labels: torch.Tensor, head: LabelOnlyHead,
                           chunk_size: Optional[int] = None) -> torch.Tensor:
    """``summed_loss(head(hidden), labels, shift=True)`` with the head run on labelled positions only."""
    labels = labels.to(hidden.device)
    hidden = hidden[:, hidden.shape[1] - labels.shape[1]:]  # prompt tuning prepends virtual tokens
    return linear_cross_entropy_sum(hidden[:, :-1], head.linear.weight, head.linear.bias, labels[:, 1:],
                                    head.softcap, chunk_size)


def default_chunk_size(vocab: int) -> int:
    """Positions per chunk: ``LOGITS_PER_CHUNK`` logits, at least 64 positions."""
    return max(64, LOGITS_PER_CHUNK // max(vocab, 1))


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                             targets: torch.Tensor, softcap: Optional[float] = None,
                             chunk_size: Optional[int] = None) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` summed (in float32) over the targets that are not -100.

    ``hidden`` is ``[..., H]`` and ``targets`` the matching ``[...]``; only the rows with a target
    reach the head, ``chunk_size`` at a time. With gradients enabled nothing of size ``[rows, V]``
    is kept for backward.
    """
    keep = targets != IGNORE_INDEX
    rows, targets = hidden[keep], targets[keep]
    chunk = chunk_size or default_chunk_size(weight.shape[0])
    wants_grad = any(t is not None and t.requires_grad for t in (rows, weight, bias))
    if torch.is_grad_enabled() and wants_grad:
        return LinearCrossEntropy.apply(rows, weight, bias, targets, softcap, chunk)
    with torch.no_grad():
        return sum((F.cross_entropy(_chunk_logits(rows[i:i + chunk], weight, bias, softcap)[0],
                                    targets[i:i + chunk], reduction="sum")
                    for i in range(0, rows.shape[0], chunk)), torch.zeros((), device=rows.device))


def _chunk_logits(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  softcap: Optional[float]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """One chunk's logits in float32 at least (softcapped as the model does) and, with a softcap,
    tanh(logits / cap)."""
    if rows.dtype != weight.dtype and not torch.is_autocast_enabled(rows.device.type):
        rows = rows.to(weight.dtype)
    logits = F.linear(rows, weight, bias)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if softcap is None:
        return logits, None
    capped = torch.tanh(logits / softcap)
    return capped * softcap, capped


def _chunk_loss_and_grad(rows: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                         targets: torch.Tensor, softcap: Optional[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's summed cross-entropy and its gradient with respect to the (pre-softcap) logits.

    The softmax is computed in place of the logits (``torch.logsumexp`` would allocate a second
    ``[chunk, V]`` buffer).
    """
    logits, capped = _chunk_logits(rows, weight, bias, softcap)
    target_logits = logits.gather(1, targets[:, None])
    top = logits.amax(dim=-1, keepdim=True)
    grad = logits.sub_(top).exp_()
    norm = grad.sum(dim=-1, keepdim=True)
    loss = (norm.log() + top - target_logits).sum()
    grad.div_(norm)  # softmax
    grad[torch.arange(targets.shape[0], device=grad.device), targets] -= 1
    if capped is not None:
        grad.mul_(1 - capped.square())  # d(cap · tanh(z / cap)) / dz
    return loss, grad


class LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of a linear head, its gradients computed chunk by chunk in the forward.

    The loss is a scalar, so the backward only multiplies the stored gradients by the incoming one:
    what stays alive between forward and backward is the gradient of the hidden rows ``[N, H]`` (and
    of the head's weight and bias when they train), never logits.
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, targets, softcap, chunk):
        grad_rows = torch.empty_like(rows) if rows.requires_grad else None
        trains_weight = weight.requires_grad
        exact = torch.promote_types(weight.dtype, torch.float32)  # float32, or float64 for a float64 model
        grad_weight = torch.zeros(weight.shape, dtype=exact, device=weight.device) if trains_weight else None
        trains_bias = bias is not None and bias.requires_grad
        grad_bias = torch.zeros(bias.shape, dtype=exact, device=bias.device) if trains_bias else None
        total = torch.zeros((), dtype=exact, device=rows.device)
        for start in range(0, rows.shape[0], chunk):
            part = rows[start:start + chunk]
            loss, grad = _chunk_loss_and_grad(part, weight, bias, targets[start:start + chunk], softcap)
            total += loss
            if grad_rows is not None:
                grad_rows[start:start + chunk] = grad.to(weight.dtype) @ weight
            if grad_weight is not None:
                grad_weight.addmm_(grad.t(), part.to(exact))
            if grad_bias is not None:
                grad_bias += grad.sum(0)
        ctx.save_for_backward(grad_rows, grad_weight, grad_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype, exact)
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_rows, grad_weight, grad_bias = ctx.saved_tensors
        weight_dtype, bias_dtype, exact = ctx.dtypes
        scaled = grad_output.to(exact)
        return (None if grad_rows is None else grad_rows * scaled.to(grad_rows.dtype),
                None if grad_weight is None else (grad_weight * scaled).to(weight_dtype),
                None if grad_bias is None else (grad_bias * scaled).to(bias_dtype),
                None, None, None)
