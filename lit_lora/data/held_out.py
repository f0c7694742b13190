"""A validation split lit-lora makes stays held out: no validation prompt is also a training prompt.

A random split of data with repeated prompts (the same instruction answered twice) puts some of them on both
sides; generation evaluation then finds its rows in training and stops (``evaluation/overlap.py``). Where the
plain split of ``val_fraction`` would do that, an SFT datamodule splits by prompt instead: each prompt's rows all
go to one side, about as many validation rows as before (rows dropped later not counted), counted in the log, and
never every prompt in validation. Data without repeated prompts keeps the plain split::

    >>> from datasets import Dataset
    >>> train = Dataset.from_list([{"q": "Add a and b."}, {"q": "Sort a list."}, {"q": "Reverse a string."}])
    >>> val = Dataset.from_list([{"q": "add a  and b."}])
    >>> train, val = keep_prompts_apart(train, val, lambda row: normalize_input(row["q"]), 0, "rows.jsonl")
    >>> sorted(normalize_input(q) for q in val["q"]) in (["add a and b.", "add a and b."], ["sort a list."],
    ...                                                  ["reverse a string."])
    True
"""

from __future__ import annotations

import logging
import random
from typing import Callable, Hashable, Optional

from datasets import Dataset, concatenate_datasets

log = logging.getLogger(__name__)


def normalize_input(text: str) -> str:
    """Case- and whitespace-insensitive form of a prompt: two prompts are the same row when these are equal."""
    return " ".join(str(text).split()).casefold()


def keep_prompts_apart(train: Dataset, val: Dataset, key: Callable[[dict], Optional[str]], seed: int,
                       where: str) -> tuple[Dataset, Dataset]:
    """``train`` and ``val`` as given where no ``val`` row's ``key`` (its normalised prompt; ``None``: none) is
    a ``train`` row's too; else the rows of both split again by key, seeded, as many validation rows as ``val`` held
    rows with a key, as near as whole prompts allow, each side in the order of ``train`` then ``val``; one prompt in
    all: as given. Rows without a key (dropped later) count toward neither size: counted, they made room for every
    prompt in validation, and training then held dropped rows only."""
    keys = [key(row) for row in train]
    seen = {k for k in keys if k is not None}
    val_keys = [key(row) for row in val]
    if not any(k in seen for k in val_keys):
        return train, val
    groups: dict[Hashable, list[int]] = {}
    for i, k in enumerate(keys + val_keys):
        if k is not None:  # a row the datamodule drops stays on the train side, where it is counted
            groups.setdefault(k, []).append(i)
    if len(groups) < 2:
        log.warning("[lit-lora] %s: every row has the same prompt, so validation repeats training prompts "
                    "(generation evaluation will say so)", where)
        return train, val
    order = list(groups)
    random.Random(seed).shuffle(order)
    # the validation rows that will train, and never every one of them: at least one prompt stays in training
    room = min(sum(k is not None for k in val_keys), sum(len(rows) for rows in groups.values()) - 1)
    chosen: list[int] = []
    for group in order:  # whole prompts, skipping one that would overshoot the validation size
        if len(chosen) + len(groups[group]) <= room:
            chosen += groups[group]
    if not chosen:
        chosen = min(groups.values(), key=len)
    rows, picked = concatenate_datasets([train, val]), set(chosen)
    log.info("[lit-lora] %s: some prompts repeat across rows; split by prompt so that validation stays held out "
             "(%d prompts, %d train / %d validation rows)", where, len(groups), len(rows) - len(picked),
             len(picked))
    return (rows.select([i for i in range(len(rows)) if i not in picked]), rows.select(sorted(picked)))
