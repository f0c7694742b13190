"""Evaluation of a sequence classifier: the logits' argmax against the labels, per evaluation set.

Accuracy, macro precision / recall / F1 and the row-weighted loss of each set (``val_matched/accuracy`` …:
``EvalSetMetrics``), confusion matrix and per-class F1 under ``details`` in metrics.json::

    >>> from lit_lora.evaluation.evaluators import ClassificationEvaluator
    >>> ClassificationEvaluator().compares_generated_text
    False

``SequenceClassifierModule`` evaluates with it.
"""

from __future__ import annotations

from lit_lora.data.eval_sharding import counted_indices, without_uncounted_labels
from lit_lora.evaluation.evaluators.base import Evaluator
from lit_lora.evaluation.evaluators.eval_sets import EvalSetMetrics
from lit_lora.token_loss import label_count, summed_loss


class ClassificationEvaluator(Evaluator):
    """Classifier logits -> accuracy / precision / recall / F1 and loss, per evaluation set."""

    def __init__(self):
        super().__init__()
        self.sets = EvalSetMetrics()

    def step(self, module, batch: dict, stage: str, dataloader_idx: int) -> None:
        batch = without_uncounted_labels(batch)  # rows a padding rank repeats are run but not counted
        logits = module(batch).logits
        keep = counted_indices(batch).to(logits.device)
        self.sets.metrics_for(module, stage, dataloader_idx).update(logits.argmax(-1)[keep], batch["labels"][keep])
        self.sets.update_loss(module, stage, dataloader_idx, summed_loss(logits, batch["labels"], shift=False),
                              label_count(batch["labels"], shift=False))

    def end(self, module, stage: str) -> None:
        self.sets.log(module, stage, self.extra_metrics)
