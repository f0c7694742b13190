"""Label parsing: one label mentioned -> that label; none or several -> unparseable (None)."""

import pytest

from lit_lora.evaluation.labels import label_index, parse_label

NLI = ["entailment", "neutral", "contradiction"]


@pytest.mark.parametrize("text, expected", [
    ("neutral", "neutral"),
    (" Contradiction.</s>", "contradiction"),
    ("Answer: ENTAILMENT", "entailment"),
    ("**Neutral**", "neutral"),
    ("I would say the relation is contradiction here", "contradiction"),
    ("entailment or neutral", None),          # hedging is not an answer
    ("entailments", None),                    # whole words only
    ("", None),
    ("the premise supports it", None),
])
def test_parse_label(text, expected):
    assert parse_label(text, NLI) == expected


def test_longer_label_masks_the_shorter_one():
    labels = ["entailment", "not_entailment"]
    assert parse_label("not entailment", labels) == "not_entailment"
    assert parse_label("not_entailment", labels) == "not_entailment"
    assert parse_label("entailment", labels) == "entailment"


def test_label_index_marks_unparseable():
    assert label_index("neutral", NLI) == 1
    assert label_index("no idea", NLI) == -1
