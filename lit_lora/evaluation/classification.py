"""Classification metrics (torchmetrics): accuracy, macro precision / recall / F1, per-class F1, confusion matrix.

torchmetrics keeps the counts per process and sums them across processes in ``compute()``, so the
numbers are those of the whole evaluation set under DDP::

    metrics = ClassificationMetrics(["entailment", "neutral", "contradiction"], allow_unparseable=True)
    metrics.update(torch.tensor([0, 2, -1]), torch.tensor([0, 1, 1]))   # -1: an unparseable answer
    scalars, details = metrics.compute()
    # scalars: accuracy, precision_macro, recall_macro, f1_macro, f1/<label>, (unparseable)
    # details: confusion_matrix (rows = gold, columns = predicted), per_class_f1, support, labels

An unparseable prediction (index -1) counts as wrong: it is a false negative of its gold class and
a false positive of no class (it is kept in an extra "unparseable" confusion-matrix column). Macro
averages are the unweighted mean over the real classes that occur (as gold label or prediction), as
torchmetrics' and scikit-learn's ``average="macro"`` take it: a class absent from a small evaluation
set would otherwise add a 0 and halve a perfect score.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from lit_lora.evaluation.labels import UNPARSEABLE


def macro(per_class: torch.Tensor, confusion: torch.Tensor, k: int) -> float:
    """Mean of ``per_class`` over the first ``k`` classes that are some row's gold label or prediction
    (torchmetrics' macro average; 0 when no row was scored)."""
    occurs = (confusion[:k].sum(1) + confusion[:k, :k].sum(0)) > 0  # gold support + predicted count
    return float(per_class[occurs].sum() / occurs.sum()) if bool(occurs.any()) else 0.0


class ClassificationMetrics(nn.Module):
    """The metrics of one evaluation set (one per dataloader: MultiNLI matched and mismatched apart)."""

    def __init__(self, label_names: Sequence[str], allow_unparseable: bool = False):
        super().__init__()
        self.label_names = list(label_names)
        self.allow_unparseable = allow_unparseable
        k = len(self.label_names) + (1 if allow_unparseable else 0)  # + the "unparseable" column
        self.accuracy = MulticlassAccuracy(k, average="micro")
        self.precision = MulticlassPrecision(k, average=None)
        self.recall = MulticlassRecall(k, average=None)
        self.f1 = MulticlassF1Score(k, average=None)
        self.confusion = MulticlassConfusionMatrix(k)

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """``preds`` / ``target``: class indices of shape (batch,); ``preds`` may hold -1 (unparseable). An empty
        update (a DDP rank's batch of repeated rows only, which count for nothing) adds nothing: torchmetrics
        refuses empty tensors, and the rank still takes part in the sync of ``compute``."""
        if target.numel() == 0:
            return
        preds = preds.long().to(target.device)
        if (preds == UNPARSEABLE).any():
            if not self.allow_unparseable:
                raise ValueError("prediction -1 (unparseable) given to metrics built without allow_unparseable")
            preds = torch.where(preds == UNPARSEABLE, torch.full_like(preds, len(self.label_names)), preds)
        for metric in (self.accuracy, self.precision, self.recall, self.f1, self.confusion):
            metric.update(preds, target)

    def compute(self) -> tuple[dict[str, float], dict]:
        """Scalars to log, and the non-scalar details (confusion matrix, per-class F1, support)."""
        k = len(self.label_names)
        precision, recall, f1 = (m.compute()[:k].float() for m in (self.precision, self.recall, self.f1))
        confusion = self.confusion.compute()
        scalars = {
            "accuracy": float(self.accuracy.compute()),
            "precision_macro": macro(precision, confusion, k),
            "recall_macro": macro(recall, confusion, k),
            "f1_macro": macro(f1, confusion, k),
            **{f"f1/{name}": float(f1[i]) for i, name in enumerate(self.label_names)},
        }
        details = {
            "labels": self.label_names,
            "confusion_matrix": confusion[:k].tolist(),  # rows: gold label; columns: prediction
            "per_class_f1": {name: float(f1[i]) for i, name in enumerate(self.label_names)},
            "support": {name: int(confusion[i].sum()) for i, name in enumerate(self.label_names)},
            "n": int(confusion.sum()),
        }
        if self.allow_unparseable:
            unparseable = int(confusion[:, k].sum())
            scalars["unparseable"] = float(unparseable)
            details["unparseable"] = unparseable
            details["confusion_matrix_columns"] = self.label_names + ["unparseable"]
        return scalars, details

    def reset(self) -> None:
        for metric in (self.accuracy, self.precision, self.recall, self.f1, self.confusion):
            metric.reset()
