"""A classifier's ``max_length`` must leave a token of each sentence beside a pair's special tokens.

Below the special tokens the tokenizer cut nothing (RoBERTa at 3: rows of 30 tokens, logged as "cut at
max_length=3"); just above them it cut a sentence away entirely (the tiny Llama at 2: ``<s><s>``, no premise and no
hypothesis, trained on its label). Either is refused, naming the setting, before any row is tokenised.
"""

from __future__ import annotations

import pytest
from harness import SAMPLES, setup_error

from lit_lora.data.nli import SNLIDataModule
from lit_lora.errors import IncompatibleConfig

pytestmark = pytest.mark.faults


def snli(tiny_model, arch: str, max_length: int) -> SNLIDataModule:
    return SNLIDataModule(source=str(SAMPLES / "snli_train.jsonl"), tokenizer_name_or_path=tiny_model(arch),
                          val_fraction=0.25, max_length=max_length)


@pytest.mark.parametrize("arch, max_length, least", [("roberta", 3, 6), ("roberta", 5, 6), ("llama", 2, 4),
                                                      ("llama", 3, 4)])
def test_a_max_length_without_room_for_both_sentences_is_refused(tiny_model, arch, max_length, least):
    message = setup_error(snli(tiny_model, arch, max_length), IncompatibleConfig)
    assert message.startswith(f"data.init_args.max_length {max_length} leaves no room for a premise and a hypothesis")
    assert f"set max_length to at least {least}" in message


@pytest.mark.parametrize("arch, max_length", [("roberta", 6), ("llama", 4)])
def test_the_least_max_length_keeps_a_token_of_each_sentence(tiny_model, arch, max_length):
    dm = snli(tiny_model, arch, max_length)
    dm.setup("fit")
    tokenizer = dm.tokenizer
    special = set(tokenizer.all_special_ids)
    for row in dm.datasets["train"]:
        ids = row["input_ids"]
        assert len(ids) <= max_length
        words = [i for i in ids if i not in special]
        assert len(words) == 2  # one token of the premise, one of the hypothesis
