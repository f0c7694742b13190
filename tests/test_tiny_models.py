"""The tiny twins (``lit_lora.tiny``) start where an untrained model should: every next token about equally
likely, a loss near ln(vocabulary), so a tutorial's before/after figure reads like a real run's."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_an_untrained_twin_starts_near_the_uniform_loss(tiny_model, arch):
    path = tiny_model(arch)
    vocab = AutoConfig.from_pretrained(path).vocab_size
    auto = AutoModelForSeq2SeqLM if arch == "t5" else AutoModelForCausalLM
    model = auto.from_pretrained(path).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (4, 24), generator=generator)
    inputs = {"input_ids": ids, "labels": torch.randint(5, vocab, (4, 12), generator=generator)} if arch == "t5" \
        else {"input_ids": ids, "labels": ids}
    with torch.no_grad():
        loss = model(**inputs).loss.item()
    assert abs(loss - math.log(vocab)) < 1.0, (loss, math.log(vocab))  # T5 at initializer_factor 1.0: ~34
