"""Text-generation metrics from torchmetrics: SacreBLEU, ROUGE-1/2/L (P/R/F), exact match, loss and perplexity.

    from lit_lora.evaluation.text_metrics import TextMetrics
    metrics = TextMetrics()
    metrics.update(["return a + b"], ["return a + b"], hit_limit=[False])
    metrics.compute()   # {"bleu": 1.0, "rouge1_fmeasure": 1.0, ..., "exact_match": 1.0}

Every state is a torchmetrics state, so ``compute()`` synchronises across DDP ranks. ROUGE runs
without ``rougeLsum`` and without stemming: neither NLTK nor a download is needed. Scores are on
torchmetrics' 0–1 scale.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Sequence

import torch
from torch import nn
from torchmetrics import Metric, SumMetric
from torchmetrics.text import ROUGEScore, SacreBLEUScore

from lit_lora.token_loss import perplexity

log = logging.getLogger("lit_lora")
ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


def normalize_answer(text: str) -> str:
    """Exact match ignores surrounding and repeated whitespace only (code is case- and punctuation-sensitive)."""
    return " ".join(text.split())


class ExactMatch(Metric):
    """Fraction of predictions equal to their reference after ``normalize_answer``."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("correct", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, preds: Sequence[str], refs: Sequence[str]) -> None:
        self.correct += sum(normalize_answer(p) == normalize_answer(r) for p, r in zip(preds, refs))
        self.total += len(preds)

    def compute(self) -> torch.Tensor:
        return self.correct / self.total.clamp(min=1)


class WeightedMean(Metric):
    """Weighted mean in which a NaN / inf value stays: torchmetrics' ``MeanMetric`` drops NaN by default, and with
    ``nan_strategy="disable"`` it ignores the weights (torchmetrics 1.x)."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("total", torch.tensor(0.0), dist_reduce_fx="sum")
        self.add_state("weight", torch.tensor(0.0), dist_reduce_fx="sum")

    def update(self, value: torch.Tensor, weight) -> None:
        weight = torch.as_tensor(weight, dtype=self.total.dtype, device=self.total.device)
        self.total += (torch.as_tensor(value, dtype=self.total.dtype, device=self.total.device) * weight).sum()
        self.weight += weight.sum()

    def compute(self) -> torch.Tensor:
        return self.total / self.weight


class TextMetrics(nn.Module):
    """The generation metrics of one evaluated split (a module, so the states follow the model's device)."""

    def __init__(self, **metric_kwargs):
        super().__init__()
        self.bleu = SacreBLEUScore(tokenize="13a", **metric_kwargs)
        self.rouge = ROUGEScore(rouge_keys=ROUGE_KEYS, **metric_kwargs)
        self.exact = ExactMatch(**metric_kwargs)
        self.hit_limit = SumMetric(**metric_kwargs)
        self.rows = SumMetric(**metric_kwargs)
        self.loss = WeightedMean(**metric_kwargs)  # weighted by label tokens; a non-finite batch shows

    def update(self, preds: Sequence[str], refs: Sequence[str], hit_limit: Optional[Sequence[bool]] = None) -> None:
        preds, refs = list(preds), list(refs)
        self.bleu.update(preds, [[r] for r in refs])
        self.rouge.update(preds, refs)
        self.exact.update(preds, refs)
        self.hit_limit.update(float(sum(hit_limit or [])))
        self.rows.update(float(len(preds)))

    def update_loss(self, loss: torch.Tensor, n_tokens: int) -> None:
        self.loss.update(loss.detach().float(), weight=n_tokens)

    def compute(self) -> dict[str, float]:
        out: dict[str, float] = {}
        if self.loss.update_called:
            out["loss"] = float(self.loss.compute())
            if not math.isfinite(out["loss"]):
                log.warning("[lit-lora] evaluation loss is %s: a batch gave a non-finite loss; reported as is",
                            out["loss"])
            out["perplexity"] = perplexity(out["loss"])
        if self.exact.update_called:
            out["bleu"] = float(self.bleu.compute())
            out.update({k: float(v) for k, v in self.rouge.compute().items()})
            out["exact_match"] = float(self.exact.compute())
            out["hit_max_new_tokens"] = float(self.hit_limit.compute())
            out["generated_rows"] = float(self.rows.compute())
        return out

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()


def score_rows(preds: Sequence[str], refs: Sequence[str], hit_limit: Optional[Sequence[bool]] = None) -> dict:
    """Metrics of already gathered rows (no cross-rank sync: every rank holds them all)."""
    metrics = TextMetrics(sync_on_compute=False)
    metrics.update(preds, refs, hit_limit)
    return metrics.compute()
