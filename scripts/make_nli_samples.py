"""Write the bundled MultiNLI and SNLI samples: small, deterministic and learnable.

    python scripts/make_nli_samples.py          # rewrites lit_lora/data/samples/{multinli,snli}_*.jsonl

Rows follow the hub schemas exactly (``nyu-mll/multi_nli``: promptID, pairID, premise,
premise_binary_parse, premise_parse, hypothesis, hypothesis_binary_parse, hypothesis_parse, genre,
label; ``stanfordnlp/snli``: premise, hypothesis, label; 0 entailment, 1 neutral, 2 contradiction,
SNLI -1 = no gold label). The sentences are templated so that the label follows from a word-level
relation between premise and hypothesis (a subset of the premise entails it; a negation or an
opposite verb contradicts it; an added cause or companion is neutral): a tiny model learns it in a
few dozen steps, which is what the tests need. MultiNLI's matched genres and mismatched genres use
different nouns and places, so the two validation sets really differ.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "lit_lora" / "data" / "samples"

MATCHED = {
    "fiction": (["girl", "knight", "wizard", "sailor"], ["castle", "forest"]),
    "government": (["senator", "clerk", "mayor", "judge"], ["office", "capitol"]),
    "slate": (["writer", "critic", "editor", "artist"], ["studio", "cafe"]),
    "telephone": (["caller", "friend", "neighbor", "cousin"], ["kitchen", "garden"]),
    "travel": (["tourist", "guide", "pilot", "driver"], ["harbor", "market"]),
}
MISMATCHED = {
    "facetoface": (["student", "teacher", "farmer", "baker"], ["school", "farm"]),
    "letters": (["donor", "member", "reader", "volunteer"], ["library", "church"]),
    "nineeleven": (["officer", "agent", "firefighter", "analyst"], ["tower", "airport"]),
    "oup": (["scholar", "poet", "monk", "printer"], ["abbey", "college"]),
    "verbatim": (["speaker", "linguist", "child", "actor"], ["theater", "museum"]),
}
SNLI_SCENES = (["man", "woman", "dog", "boy", "player", "musician", "cyclist", "horse"],
               ["park", "street", "beach", "field", "stage", "river"])
ADJECTIVES = ["young", "old", "tall", "happy", "tired", "quiet"]
VERBS = {"running": "sitting", "singing": "silent", "laughing": "crying", "standing": "lying down",
         "eating": "fasting", "working": "resting"}
REASONS = ["for fun", "with a friend", "at night", "for money"]


def premise_of(rng: random.Random, nouns: list[str], places: list[str]) -> tuple[str, dict]:
    slots = {"adj": rng.choice(ADJECTIVES), "noun": rng.choice(nouns), "verb": rng.choice(list(VERBS)),
             "place": rng.choice(places)}
    template = rng.choice(["The {noun} is {verb} in the {place}.", "The {adj} {noun} is {verb}."])
    return template.format(**slots), slots


def hypothesis_of(rng: random.Random, label: int, s: dict) -> str:
    if label == 0:  # entailment: a part of what the premise says
        return rng.choice(["A {noun} is {verb}.", "Someone is {verb}."]).format(**s)
    if label == 1:  # neutral: the premise plus something it does not say
        return ("The {noun} is {verb} " + rng.choice(REASONS) + ".").format(**s)
    opposite = VERBS[s["verb"]]  # contradiction: negated, or the opposite state
    return rng.choice(["The {noun} is not {verb}.", "Nobody is {verb}.",
                       "The {noun} is " + opposite + "."]).format(**s)


def binary_parse(sentence: str) -> str:
    words = sentence.replace(".", " .").split()
    tree = words[-1]
    for word in reversed(words[:-1]):
        tree = f"( {word} {tree} )"
    return tree


def parse(sentence: str) -> str:
    return "(ROOT (S " + " ".join(f"(X {w})" for w in sentence.replace(".", " .").split()) + "))"


SEEN: set[tuple[str, str]] = set()  # no pair twice, so no validation row repeats a training row


def new_pair(rng: random.Random, nouns: list[str], places: list[str]) -> tuple[str, str, int]:
    while True:
        premise, slots = premise_of(rng, nouns, places)
        label = rng.randrange(3)
        hypothesis = hypothesis_of(rng, label, slots)
        if (premise, hypothesis) not in SEEN:
            SEEN.add((premise, hypothesis))
            return premise, hypothesis, label


def multinli_rows(rng: random.Random, genres: dict, n: int, first_id: int) -> list[dict]:
    rows = []
    names = sorted(genres)
    for i in range(n):
        genre = names[i % len(names)]
        premise, hypothesis, label = new_pair(rng, *genres[genre])
        prompt_id = first_id + i
        rows.append({
            "promptID": prompt_id, "pairID": f"{prompt_id}{'enc'[label]}",
            "premise": premise, "premise_binary_parse": binary_parse(premise), "premise_parse": parse(premise),
            "hypothesis": hypothesis, "hypothesis_binary_parse": binary_parse(hypothesis),
            "hypothesis_parse": parse(hypothesis), "genre": genre, "label": label,
        })
    return rows


def snli_rows(rng: random.Random, n: int, no_gold_every: int) -> list[dict]:
    rows = []
    for i in range(n):
        premise, hypothesis, label = new_pair(rng, *SNLI_SCENES)
        # annotators disagreed: the hub marks the pair -1 (no gold label)
        rows.append({"premise": premise, "hypothesis": hypothesis,
                     "label": -1 if i % no_gold_every == no_gold_every - 1 else label})
    return rows


def write(name: str, rows: list[dict]) -> None:
    path = OUT / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} rows to {path}")


def main() -> None:
    rng = random.Random(3)
    write("multinli_train.jsonl", multinli_rows(rng, MATCHED, 300, 10000))
    write("multinli_validation_matched.jsonl", multinli_rows(rng, MATCHED, 120, 20000))
    write("multinli_validation_mismatched.jsonl", multinli_rows(rng, MISMATCHED, 120, 30000))
    write("snli_train.jsonl", snli_rows(rng, 300, no_gold_every=20))
    write("snli_validation.jsonl", snli_rows(rng, 120, no_gold_every=30))


if __name__ == "__main__":
    main()
