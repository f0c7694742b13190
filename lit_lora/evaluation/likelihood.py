"""Rank candidate answers by their log-likelihood under a causal LM: classification without parsing.

    from lit_lora.evaluation.likelihood import candidate_log_likelihoods
    scores = candidate_log_likelihoods(model, tokenizer, prompts, ["entailment", "neutral", "contradiction"])
    predictions = scores.argmax(-1)          # (batch,)

Each candidate is tokenised as in training (``SFTDataModule``: prompt and response tokenised apart,
the response followed by EOS), so the score is log p(candidate tokens + EOS | prompt): a candidate that
is only the prefix of a longer answer gains nothing. Prompts are left-padded so that every candidate
starts at the same column; positions come from the attention mask, and only the logits of the
candidate positions are computed (``logits_to_keep``), not a full vocabulary row per prompt token.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch

from lit_lora.data.collators import IGNORE_INDEX
from lit_lora.evaluation.generation import drops_position_ids


@torch.no_grad()
def candidate_log_likelihoods(model, tokenizer, prompts: Sequence[str], candidates: Sequence[str],
                              add_special_tokens: bool = True, append_eos: bool = True,
                              split_special_tokens: bool = False) -> torch.Tensor:
    """Summed log-probabilities, shape (len(prompts), len(candidates)); one prompt at a time for a
    prompt-learning adapter, which ignores ``position_ids`` (``generation.drops_position_ids``)."""
    if drops_position_ids(model) and len(prompts) > 1:
        return torch.cat([candidate_log_likelihoods(model, tokenizer, [p], candidates, add_special_tokens,
                                                    append_eos, split_special_tokens) for p in prompts])
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    prompt_ids = tokenizer(list(prompts), add_special_tokens=add_special_tokens,
                           split_special_tokens=split_special_tokens)["input_ids"]  # as the training rows
    cand_ids = [tokenizer(c, add_special_tokens=False)["input_ids"] + ([tokenizer.eos_token_id] if append_eos else [])
                for c in candidates]
    b, k = len(prompt_ids), len(cand_ids)
    p_len, c_len = max(len(p) for p in prompt_ids), max(len(c) for c in cand_ids)
    ids = torch.full((b * k, p_len + c_len), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    targets = torch.full((b * k, c_len), IGNORE_INDEX, dtype=torch.long)  # the candidate tokens, right-padded
    for i, prompt in enumerate(prompt_ids):
        for j, cand in enumerate(cand_ids):
            row = i * k + j
            ids[row, p_len - len(prompt):p_len] = torch.tensor(prompt)
            ids[row, p_len:p_len + len(cand)] = torch.tensor(cand)
            mask[row, p_len - len(prompt):p_len + len(cand)] = 1
            targets[row, :len(cand)] = torch.tensor(cand)
    ids, mask, targets = ids.to(device), mask.to(device), targets.to(device)
    kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" in inspect.signature(inner.forward).parameters:
        kwargs["logits_to_keep"] = c_len + 1
    was_training = model.training
    model.eval()
    try:
        logits = model(**kwargs).logits[:, -(c_len + 1):-1].float()  # (b*k, c_len, vocab): predicts each candidate token
    finally:
        model.train(was_training)
    logprobs = logits.log_softmax(-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logprobs * (targets != IGNORE_INDEX)).sum(-1).view(b, k)
