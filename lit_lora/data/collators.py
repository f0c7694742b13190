"""Dynamic padding: pad each batch to its longest row, labels with -100 so padding never enters the loss."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

IGNORE_INDEX = -100


@dataclass
class PadCollator:
    """Pads ``input_ids`` / ``attention_mask`` / ``labels`` (and any ``*_ids`` list column) of a batch.

    Labels are built before padding, so an EOS that doubles as the pad token still counts in the loss.
    Scalar columns (e.g. a class label) become a tensor; string columns stay lists.
    """

    pad_token_id: int
    padding_side: Literal["right", "left"] = "right"
    label_pad_id: int = IGNORE_INDEX

    def pad_value(self, key: str) -> int:
        if key == "labels":
            return self.label_pad_id
        if key.endswith("attention_mask"):
            return 0
        return self.pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        batch: dict = {}
        for key in rows[0]:
            values = [row[key] for row in rows]
            if isinstance(values[0], (list, tuple)):
                longest = max(len(v) for v in values)
                fill = self.pad_value(key)
                padded = [
                    (list(v) + [fill] * (longest - len(v))) if self.padding_side == "right"
                    else ([fill] * (longest - len(v)) + list(v))
                    for v in values
                ]
                batch[key] = torch.tensor(padded, dtype=torch.long)  # (batch, longest)
            elif isinstance(values[0], (int, float, bool)):
                batch[key] = torch.tensor(values)
            else:
                batch[key] = values
        return batch
