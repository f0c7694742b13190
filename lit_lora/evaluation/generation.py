"""Batched generation with the KV cache for causal (left padding) and encoder-decoder models.

    from lit_lora.evaluation.generation import GenerationSettings, generate_texts
    outs = generate_texts(model, tokenizer, ["def add(a, b):"], GenerationSettings(max_new_tokens=32))
    outs[0].text, outs[0].hit_limit   # the completion, and whether it stopped at max_new_tokens

Prompts are generated a batch per ``model.generate`` call, never one example per call. A completion
that ends because it reached ``max_new_tokens`` (not an EOS) is flagged ``hit_limit`` and counted in
the metrics, so a cut-off answer is never passed off as a finished one.
"""

from __future__ import annotations

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

    def generation_config(self, tokenizer):
        from transformers import GenerationConfig

        sampling = dict(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k) if self.do_sample else {}
        return GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample,
                                num_beams=self.num_beams, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **sampling)


class Generated(NamedTuple):
    text: str
    hit_limit: bool  # stopped at max_new_tokens, not at EOS


def needs_synced_steps(model) -> bool:
    """Under ZeRO-3 every forward gathers weights from all ranks, so a rank whose answers end first must
    keep stepping until all are done (``synced_gpus``). transformers only detects this itself when
    its own DeepSpeed integration is active, which Lightning's strategy does not set up."""
    from lit_lora.sharding import is_zero3_partitioned

    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and is_zero3_partitioned(model)


@torch.no_grad()
def generate_texts(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                   encoder_decoder: bool = False, add_special_tokens: bool = True,
                   max_length: Optional[int] = None) -> list[Generated]:
    """Answers to ``prompts``, generated in one batched ``generate`` call with the KV cache.

    Causal models get left padding (every prompt ends where its answer starts); encoder-decoder models
    get right-padded encoder input. ``add_special_tokens`` must match how the prompt was tokenised in
    training (a chat-template prompt already carries BOS).
    """
    if not prompts:
        return []
    device = next(model.parameters()).device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens,
                    padding_side="right" if encoder_decoder else "left",
                    truncation=max_length is not None, max_length=max_length)
    input_ids, attention_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)  # (batch, prompt_len)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(settings.seed)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                 generation_config=settings.generation_config(tokenizer),
                                 synced_gpus=True if needs_synced_steps(model) else None)  # None: transformers decides (FSDP)
    finally:
        model.train(was_training)
    new_tokens = out if encoder_decoder else out[:, input_ids.shape[1]:]  # (batch, new_len)
    results = []
    for row in new_tokens.tolist():
        ended = tokenizer.eos_token_id in row
        text = tokenizer.decode(row, skip_special_tokens=True)
        results.append(Generated(text.strip(), hit_limit=not ended and len(row) >= settings.max_new_tokens))
    return results
