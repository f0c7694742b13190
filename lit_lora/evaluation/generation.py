"""Batched generation with the KV cache for causal (left padding) and encoder-decoder models.

    from lit_lora.evaluation.generation import GenerationSettings, generate_texts
    outs = generate_texts(model, tokenizer, ["def add(a, b):"], GenerationSettings(max_new_tokens=32))
    outs[0].text, outs[0].hit_limit   # the completion, and whether it stopped at max_new_tokens

Prompts are generated a batch per ``model.generate`` call, never one example per call: sorted by token
length, longest first (a batch pads only to its own longest prompt, and a batch that does not fit in memory
is the first one), cut into batches of ``generation_batch_size`` rows within ``generation_batch_tokens``, and
the answers returned in the order of the prompts. Greedy answers match one-prompt-at-a-time answers (left
padding is masked out; only a numerical near-tie between two tokens could flip). A prompt-learning adapter
(peft ignores ``position_ids`` there) gets batches of equal-length prompts only, which need no padding.
An answer ends at any of the model's own EOS ids (its ``generation_config``) or the tokenizer's EOS
(``stop_ids``); one that ends because it reached ``max_new_tokens`` instead is flagged ``hit_limit`` and counted
in the metrics, so a cut-off answer is never passed off as a finished one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are generated and evaluated (YAML key ``model.init_args.evaluation``).

    Args:
        generate: Generate answers at test time and report BLEU / ROUGE / exact match (loss is always reported).
        during_validation: Also generate at every validation (slower; off by default).
        max_new_tokens: Longest answer; an answer that reaches it is counted as ``hit_max_new_tokens``.
        do_sample: Sample instead of greedy decoding.
        temperature: Sampling temperature.
        top_p: Nucleus sampling mass.
        top_k: Sample among the k most likely tokens.
        num_beams: Beam search width (1 = no beam search).
        seed: Seed of sampling, so a sampled evaluation can be repeated.
        allow_train_overlap: Evaluate even when evaluated rows duplicate training rows (the report then says so).
        predictions_file: JSONL of every prompt, reference and prediction, written beside ``metrics.json``.
        generation_batch_size: Most prompts in one ``generate`` call. Evaluation answers an epoch's prompts at its
            end, longest first, in batches of this size, whatever ``data.eval_batch_size`` (the loss batches).
        generation_batch_tokens: Most token slots in one call, rows x (longest prompt + ``max_new_tokens``) x
            ``num_beams``, the KV cache the batch fills: a batch of long prompts holds fewer rows
            (at least one). ``null``: only ``generation_batch_size`` limits a batch.
    """

    generate: bool = True
    during_validation: bool = False
    max_new_tokens: int = 128
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 50
    num_beams: int = 1
    seed: int = 0
    allow_train_overlap: bool = False
    predictions_file: str = "predictions.jsonl"
    generation_batch_size: int = 64
    generation_batch_tokens: Optional[int] = 16384

    def generation_config(self, tokenizer, eos_ids: Optional[list[int]] = None):
        """``eos_ids``: the tokens that end an answer (``stop_ids``; default: the tokenizer's EOS)."""
        from transformers import GenerationConfig

        sampling = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k) if self.do_sample else {}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                num_beams=self.num_beams, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=eos_ids or tokenizer.eos_token_id, **sampling)


class Generated(NamedTuple):
    text: str
    hit_limit: bool  # stopped at max_new_tokens, not at EOS


def needs_synced_steps(model) -> bool:
    """Under ZeRO-3 every forward gathers weights from all ranks, so a rank whose answers end first must
    keep stepping until all are done (``synced_gpus``). transformers only detects this itself when
    its own DeepSpeed integration is active, which Lightning's strategy does not set up."""
    from lit_lora.cluster.sharding import is_zero3_partitioned

    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and is_zero3_partitioned(model)


def batch_sizes(lengths: list[int], settings: GenerationSettings) -> list[int]:
    """Rows of each ``generate`` call over prompt ``lengths`` sorted longest first: at most
    ``generation_batch_size``, and within ``generation_batch_tokens`` (a batch's first prompt is its longest)."""
    sizes: list[int] = []
    start, most = 0, max(1, settings.generation_batch_size)
    while start < len(lengths):
        rows = min(most, len(lengths) - start)
        if settings.generation_batch_tokens:
            slots = (lengths[start] + settings.max_new_tokens) * max(1, settings.num_beams)
            rows = max(1, min(rows, settings.generation_batch_tokens // slots))
        sizes.append(rows)
        start += rows
    return sizes


def drops_position_ids(model) -> bool:
    """peft's prompt learning (prompt tuning, p-tuning, prefix tuning) ignores ``position_ids``: a left-padded
    prompt would be read from positions shifted by its padding, so such a model is never given padding."""
    config = getattr(model, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def same_length_runs(lengths: list[int], sizes: list[int]) -> list[int]:
    """``sizes`` (over ``lengths`` sorted longest first) cut further wherever the prompt length changes,
    so that no batch needs padding."""
    runs: list[int] = []
    start = 0
    for rows in sizes:
        batch = lengths[start:start + rows]
        cuts = [0] + [i for i in range(1, len(batch)) if batch[i] != batch[i - 1]] + [len(batch)]
        runs += [b - a for a, b in zip(cuts, cuts[1:])]
        start += rows
    return runs


def several_ranks() -> bool:
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def agreed_lengths(lengths: list[int]) -> list[int]:
    """Under torch.distributed, the longest of every rank's i-th longest prompt, so every rank plans the same
    batches: ranks whose forwards gather weights (ZeRO-3, FSDP) must call ``generate`` together, as often."""
    if not several_ranks():
        return lengths
    dist = torch.distributed
    parts: list = [None] * dist.get_world_size()
    dist.all_gather_object(parts, lengths)
    return [max(column) for column in itertools.zip_longest(*parts, fillvalue=0)]


def padded(rows: list[list[int]], pad_id: int, left: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), each (rows, longest row), padded on the left or the right."""
    width = max(len(r) for r in rows)
    if pad_id is None and any(len(r) < width for r in rows):
        raise ValueError("the tokenizer has no pad token to batch prompts of different lengths with")
    ids, mask = [], []
    for r in rows:
        pad = width - len(r)
        ids.append([pad_id] * pad + r if left else r + [pad_id] * pad)
        mask.append([0] * pad + [1] * len(r) if left else [1] * len(r) + [0] * pad)
    return torch.tensor(ids, device=device), torch.tensor(mask, device=device)


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                   encoder_decoder: bool = False, add_special_tokens: bool = True,
                   max_length: Optional[int] = None, split_special_tokens: bool = False) -> list[Generated]:
    """Answers to ``prompts`` in their order, generated longest prompt first in batched ``generate`` calls.

    Causal models get left padding (every prompt ends where its answer starts); encoder-decoder models
    get right-padded encoder input. ``add_special_tokens`` and ``split_special_tokens`` must match how the
    prompt was tokenised in training (a chat-template prompt already carries BOS; a row's own ``"</s>"`` is
    text). Under torch.distributed every rank calls this
    (the ranks agree on the batches).
    """
    encoded = tokenizer(prompts, add_special_tokens=add_special_tokens, truncation=max_length is not None,
                        max_length=max_length, split_special_tokens=split_special_tokens)["input_ids"] \
        if prompts else []
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))  # stable: equal lengths keep their order
    lengths = agreed_lengths([len(encoded[i]) for i in order])
    sizes = batch_sizes(lengths, settings)
    if drops_position_ids(model) and not encoder_decoder:  # no padding: equal lengths only (several ranks: one row)
        sizes = [1] * len(lengths) if several_ranks() else same_length_runs(lengths, sizes)
    if not prompts:
        return []
    device = next(model.parameters()).device
    results: list[Optional[Generated]] = [None] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(settings.seed)
            start = 0
            for rows in sizes:
                if start >= len(order):
                    break
                batch = order[start:start + rows]
                answers = generate_batch(model, tokenizer, [encoded[i] for i in batch], settings, encoder_decoder)
                for i, answer in zip(batch, answers):
                    results[i] = answer
                start += rows
    finally:
        model.train(was_training)
    return results


def stop_ids(model, tokenizer) -> list[int]:
    """The model's own end tokens (an instruct model's ``generation_config`` lists its end-of-turn token beside
    EOS, e.g. Llama-3's ``<|eot_id|>``) and the tokenizer's EOS: an answer ends at any of them, and one that
    reached one was not cut off. Passing the tokenizer's EOS alone would run the model on past its turn."""
    own = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [*(own if isinstance(own, (list, tuple)) else [own]), tokenizer.eos_token_id]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def generate_batch(model, tokenizer, rows: list[list[int]], settings: GenerationSettings,
                   encoder_decoder: bool) -> list[Generated]:
    """One ``generate`` call on tokenised prompts, padded to the longest; the decoded answers in row order."""
    input_ids, attention_mask = padded(rows, tokenizer.pad_token_id, left=not encoder_decoder,
                                       device=next(model.parameters()).device)  # (batch, prompt_len)
    stops = stop_ids(model, tokenizer)
    with torch.compiler.set_stance("force_eager"):  # compiled layers (compile: true) would recompile every step
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                             generation_config=settings.generation_config(tokenizer, stops),
                             synced_gpus=True if needs_synced_steps(model) else None)  # None: transformers decides
    # an encoder-decoder's output starts with the decoder-start token, which is no answer token: BART / mBART
    # start with </s> (their EOS), which would mark every answer as ended
    new_tokens = out[:, 1:] if encoder_decoder else out[:, input_ids.shape[1]:]  # (batch, new_len)
    results = []
    for row in new_tokens.tolist():
        ended = not set(stops).isdisjoint(row)  # reached an end token (then padding follows)
        text = tokenizer.decode(row, skip_special_tokens=True)
        results.append(Generated(text.strip(), hit_limit=not ended and len(row) >= settings.max_new_tokens))
    return results
