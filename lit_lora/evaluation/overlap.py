"""Honest evaluation: find evaluated rows whose normalised input duplicates a training row.

    from lit_lora.evaluation.overlap import find_overlap
    overlap = find_overlap(train_prompts, eval_prompts)
    overlap.count, overlap.indices[:5]

A model scores perfect BLEU on rows it was trained on; evaluating on such rows needs an explicit
``allow_train_overlap`` switch, and the report then says so in its first line.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

from lit_lora.data.held_out import normalize_input  # the key of the check, shared with the validation split


@dataclass
class Overlap:
    evaluated: int
    count: int
    indices: list[int] = field(default_factory=list)
    allowed: bool = False

    @property
    def fraction(self) -> float:
        return self.count / max(self.evaluated, 1)

    def sentence(self) -> str:
        return (f"{self.count} of {self.evaluated} evaluated rows ({100 * self.fraction:.1f}%) are exact duplicates "
                f"of training rows (normalised input)")

    def to_dict(self) -> dict:
        return {**asdict(self), "fraction": self.fraction, "indices": self.indices[:50]}


class TrainOverlapError(ValueError):
    """Evaluated rows were trained on and ``allow_train_overlap`` is off."""


def find_overlap(train_inputs: Iterable[str], eval_inputs: Sequence[str]) -> Overlap:
    seen = {normalize_input(t) for t in train_inputs}
    indices = [i for i, text in enumerate(eval_inputs) if normalize_input(text) in seen]
    return Overlap(evaluated=len(eval_inputs), count=len(indices), indices=indices)


def check_overlap(train_inputs: Iterable[str], eval_inputs: Sequence[str], allow: bool, where: str) -> Overlap:
    """The overlap; raises ``TrainOverlapError`` naming the first duplicated row when it is not allowed."""
    overlap = find_overlap(train_inputs, eval_inputs)
    overlap.allowed = allow
    if overlap.count and not allow:
        first = overlap.indices[0]
        raise TrainOverlapError(
            f"{where}: {overlap.sentence()}; first: row {first}, input {eval_inputs[first][:120]!r}. "
            "Evaluate on held-out rows (or dedupe the data), or set model.init_args.evaluation.allow_train_overlap: "
            "true (compare: --allow_train_overlap) to evaluate anyway; the report will then say so."
        )
    return overlap
