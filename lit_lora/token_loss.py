"""The loss of an optimizer step: token losses summed, divided by the label tokens of the whole step.

With gradient accumulation or several ranks, averaging each micro-batch's mean loss gives a
micro-batch of 40 label tokens the weight of one of 400. lit-lora sums the token losses of each
micro-batch and divides by the label tokens of the whole optimizer step, across accumulation
micro-batches and data-parallel ranks (what transformers calls ``num_items_in_batch``); a
classifier does the same with rows. The training loader hands every micro-batch the labels of its
whole step (``step_labels``, see ``lit_lora.data.resumable``), so the divisor is known before the
first backward::

    summed = summed_loss(logits, labels, shift=True)          # causal LM: position t predicts t + 1
    tokens = sum(label_count(l, shift=True) for l in batch["step_labels"])
    loss = summed / all_ranks_sum(tokens)                     # = the step's token-weighted mean
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from lit_lora.data.collators import IGNORE_INDEX  # the label the collators give padding and prompts



def _aligned(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if labels.dim() == 1:  # one class per row
        return logits, labels
    if logits.shape[1] > labels.shape[1]:  # prompt tuning prepends virtual tokens to the logits
        logits = logits[:, logits.shape[1] - labels.shape[1]:]
    if shift:
        logits, labels = logits[:, :-1], labels[:, 1:]
    return logits, labels


def summed_loss(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """Cross-entropy summed (in float32, or float64 for a float64 model) over the positions whose label is not
    -100."""
    logits, labels = _aligned(logits, labels, shift)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                           ignore_index=IGNORE_INDEX, reduction="sum")


def label_count(labels: torch.Tensor, shift: bool) -> torch.Tensor:
    """How many positions of ``labels`` enter the loss (``summed_loss``'s divisor for a mean)."""
    if shift and labels.dim() > 1:
        labels = labels[:, 1:]
    return (labels != IGNORE_INDEX).sum()


def step_label_count(step_labels: Sequence[torch.Tensor], shift: bool) -> torch.Tensor:
    """Label positions of every micro-batch of one optimizer step on this rank."""
    return torch.stack([label_count(labels, shift) for labels in step_labels]).sum()


def perplexity(mean_loss: float) -> float:
    """exp of a token-weighted mean loss, capped at e^50: an untrained or diverged model reports a huge number,
    not an overflow."""
    return math.exp(min(mean_loss, 50.0))
