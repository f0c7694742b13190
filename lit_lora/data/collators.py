"""Batch collators: padded rows (``PadCollator``) and packed rows (``PackCollator``).

Padding fills each batch to its longest row, labels with -100 so padding never enters the loss::

    PadCollator(pad_token_id=0)([{"input_ids": [5, 6]}, {"input_ids": [7]}])["input_ids"]  # [[5, 6], [7, 0]]
"""

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


@dataclass
class PackCollator:
    """Packed sequences (lists of rows, ``lit_lora.data.packing``) into one batch with no attention across rows.

    Every row's ``position_ids`` restart at 0 and its first label is -100 (the last token of a row never
    predicts the first of the next). There is no ``attention_mask``: transformers reads the row boundaries
    from the restarting positions. The sequences are stacked, each padded at its end by a block of its own
    (positions from 0 again, labels -100); ``flatten`` instead joins every row of the batch into one row,
    as FlashAttention's varlen path needs. String columns (prompt, reference) are evaluation-only and dropped.

        >>> PackCollator(pad_token_id=0)([[{"input_ids": [5, 6], "labels": [5, 6]}, {"input_ids": [7], "labels": [7]}],
        ...                               [{"input_ids": [8, 9], "labels": [-100, 9]}]])["position_ids"].tolist()
        [[0, 1, 0], [0, 1, 0]]
    """

    pad_token_id: int
    flatten: bool = False
    label_pad_id: int = IGNORE_INDEX

    def __call__(self, sequences: list[list[dict]]) -> dict:
        packed = [self.join(rows) for rows in sequences]
        if self.flatten:
            packed = [tuple(sum((p[k] for p in packed), []) for k in range(3))]
        longest = max(len(ids) for ids, _, _ in packed)
        columns: tuple[list, list, list] = ([], [], [])
        for ids, labels, positions in packed:
            pad = longest - len(ids)
            for column, values, fill in zip(columns, (ids, labels, positions),
                                            ([self.pad_token_id] * pad, [self.label_pad_id] * pad, list(range(pad)))):
                column.append(values + fill)
        input_ids, labels, position_ids = (torch.tensor(c, dtype=torch.long) for c in columns)  # (sequences, longest)
        return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}

    def join(self, rows: list[dict]) -> tuple[list[int], list[int], list[int]]:
        """input ids, labels and positions of one packed sequence."""
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for row in rows:
            ids += row["input_ids"]
            labels += [self.label_pad_id] + list(row["labels"][1:])
            positions += range(len(row["input_ids"]))
        return ids, labels, positions
