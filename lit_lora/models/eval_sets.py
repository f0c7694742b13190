"""Per-evaluation-set classification metrics for a LightningModule (MultiNLI matched / mismatched apart).

A module mixes in ``EvalSetMetrics``, calls ``metrics_for(stage, dataloader_idx, kind)`` and
``update_eval_loss(stage, dataloader_idx, summed, count)`` in its steps and ``log_eval_metrics(stage)`` at
the end of the epoch. Names say which set and which method::

    val/accuracy                       one validation set
    val_matched/loss                   its loss, weighted by label tokens (or rows), whatever the batch size
    val_matched/f1_macro               MultiNLI: names from the datamodule's ``eval_names``
    test_mismatched/generation/unparseable

Scalars go to the logger; confusion matrices and per-class F1 to ``extra_metrics`` (``metrics.json``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn
from torchmetrics import MeanMetric

from lit_lora.cluster.lightning_compat import attached_trainer
from lit_lora.evaluation.classification import ClassificationMetrics


class EvalSetMetrics:
    """Mixin for a LightningModule with ``label_names``; keeps one ``ClassificationMetrics`` per set and kind."""

    label_names: Optional[list[str]]

    def init_eval_metrics(self) -> None:
        self.eval_metrics = nn.ModuleDict()  # "<stage>_<dataloader idx>_<kind>" -> ClassificationMetrics
        self.eval_losses = nn.ModuleDict()   # "<stage>_<dataloader idx>" -> MeanMetric weighted by label count
        self.extra_metrics: dict = {}       # written under "details" of metrics.json by MetricsWriter

    def resolve_label_names(self) -> list[str]:
        """``label_names`` as given (CLI link) or from ``trainer.datamodule``; both must agree."""
        trainer = attached_trainer(self)
        datamodule = trainer.datamodule if trainer is not None else None
        from_data = getattr(datamodule, "label_names", None)
        if self.label_names is None and from_data:
            self.label_names = list(from_data)
        elif from_data and list(from_data) != self.label_names:
            raise ValueError(f"model label_names {self.label_names} differ from the datamodule's {list(from_data)}")
        if not self.label_names:
            raise ValueError(f"{type(self).__name__} needs label_names: pass them, or use a datamodule that "
                             f"defines label_names (e.g. lit_lora.data.MultiNLIDataModule)")
        return self.label_names

    def eval_set_name(self, stage: str, dataloader_idx: int) -> str:
        """``val`` for one evaluation set; ``val_matched`` / ``val_mismatched`` for several."""
        dataloaders = self.trainer.val_dataloaders if stage == "val" else self.trainer.test_dataloaders
        count = len(dataloaders) if isinstance(dataloaders, (list, tuple)) else 1
        if count <= 1:
            return stage
        names = getattr(self.trainer.datamodule, "eval_names", None)
        return f"{stage}_{names[dataloader_idx]}" if names and len(names) == count else f"{stage}_{dataloader_idx}"

    def metrics_for(self, stage: str, dataloader_idx: int, kind: str = "",
                    allow_unparseable: bool = False) -> ClassificationMetrics:
        key = f"{stage}_{dataloader_idx}_{kind}"
        if key not in self.eval_metrics:
            self.eval_metrics[key] = ClassificationMetrics(self.label_names, allow_unparseable).to(self.device)
        return self.eval_metrics[key]

    def update_eval_loss(self, stage: str, dataloader_idx: int, summed: torch.Tensor, count: torch.Tensor) -> None:
        """Add a batch's summed loss over ``count`` labels to its evaluation set's weighted mean."""
        key = f"{stage}_{dataloader_idx}"
        if key not in self.eval_losses:
            self.eval_losses[key] = MeanMetric().to(self.device)
        self.eval_losses[key].update(summed / count.clamp(min=1), weight=count)

    def log_eval_metrics(self, stage: str) -> None:
        """Compute (counts summed across processes by torchmetrics), log scalars, keep details, reset."""
        for key in [k for k in self.eval_losses if k.startswith(f"{stage}_")]:
            name = self.eval_set_name(stage, int(key.split("_", 1)[1]))
            self.log(f"{name}/loss", self.eval_losses[key].compute(), add_dataloader_idx=False)
            self.eval_losses[key].reset()
        for key in [k for k in self.eval_metrics if k.startswith(f"{stage}_")]:
            _, idx, kind = key.split("_", 2)
            name = self.eval_set_name(stage, int(idx)) + (f"/{kind}" if kind else "")
            scalars, details = self.eval_metrics[key].compute()
            for metric, value in scalars.items():
                self.log(f"{name}/{metric}", value, add_dataloader_idx=False)
            self.extra_metrics[name] = {**{k: v for k, v in scalars.items() if "/" not in k}, **details}
            self.eval_metrics[key].reset()
