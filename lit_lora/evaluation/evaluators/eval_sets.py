"""Classification metrics and loss per evaluation set (MultiNLI matched / mismatched apart), for an evaluator.

``metrics_for(module, stage, dataloader_idx, kind)`` and ``update_loss(...)`` in each step, ``log(module, stage,
details)`` at the end of the epoch. Names say which set and which method::

    val/accuracy                       one validation set
    val_matched/loss                   its loss, weighted by label tokens (or rows), whatever the batch size
    val_matched/f1_macro               MultiNLI: names from the data contract's ``eval_names``
    test_mismatched/generation/unparseable

    >>> from lit_lora.evaluation.evaluators.eval_sets import EvalSetMetrics
    >>> sets = EvalSetMetrics()
    >>> sorted(sets.state_dict())   # torchmetrics states are not persistent: nothing reaches a checkpoint
    []

Scalars go to the logger; confusion matrices and per-class F1 to ``details`` (``metrics.json``).
"""

from __future__ import annotations

import torch
from torch import nn

from lit_lora.cluster.sharding import run_device
from lit_lora.evaluation.classification import ClassificationMetrics
from lit_lora.evaluation.text_metrics import WeightedMean


class EvalSetMetrics(nn.Module):
    """One ``ClassificationMetrics`` per stage, set and kind, and one label-weighted loss per stage and set."""

    def __init__(self):
        super().__init__()
        self.metrics = nn.ModuleDict()  # "<stage>_<dataloader idx>_<kind>" -> ClassificationMetrics
        self.losses = nn.ModuleDict()   # "<stage>_<dataloader idx>" -> WeightedMean by label count

    @staticmethod
    def set_name(module, stage: str, dataloader_idx: int) -> str:
        """``val`` for one evaluation set; ``val_matched`` / ``val_mismatched`` for several."""
        dataloaders = module.trainer.val_dataloaders if stage == "val" else module.trainer.test_dataloaders
        count = len(dataloaders) if isinstance(dataloaders, (list, tuple)) else 1
        if count <= 1:
            return stage
        names = module.data_contract.eval_names
        return f"{stage}_{names[dataloader_idx]}" if names and len(names) == count else f"{stage}_{dataloader_idx}"

    def metrics_for(self, module, stage: str, dataloader_idx: int, kind: str = "",
                    allow_unparseable: bool = False) -> ClassificationMetrics:
        """The set's metrics of ``kind`` (created on first use: sets are logged in the order first used)."""
        key = f"{stage}_{dataloader_idx}_{kind}"
        if key not in self.metrics:
            self.metrics[key] = ClassificationMetrics(module.label_names, allow_unparseable).to(run_device(module))
        return self.metrics[key]

    def update_loss(self, module, stage: str, dataloader_idx: int, summed: torch.Tensor, count: torch.Tensor) -> None:
        """Add a batch's summed loss over ``count`` labels to its evaluation set's weighted mean."""
        key = f"{stage}_{dataloader_idx}"
        if key not in self.losses:
            self.losses[key] = WeightedMean().to(run_device(module))  # a non-finite batch shows
        self.losses[key].update(summed / count.clamp(min=1), count)

    def log(self, module, stage: str, details: dict) -> None:
        """Compute (counts summed across processes by torchmetrics), log scalars, keep details, reset."""
        for key in [k for k in self.losses if k.startswith(f"{stage}_")]:
            name = self.set_name(module, stage, int(key.split("_", 1)[1]))
            module.log(f"{name}/loss", self.losses[key].compute(), add_dataloader_idx=False)
            self.losses[key].reset()
        for key in [k for k in self.metrics if k.startswith(f"{stage}_")]:
            _, idx, kind = key.split("_", 2)
            name = self.set_name(module, stage, int(idx)) + (f"/{kind}" if kind else "")
            scalars, details_of_set = self.metrics[key].compute()
            for metric, value in scalars.items():
                module.log(f"{name}/{metric}", value, add_dataloader_idx=False)
            details[name] = {**{k: v for k, v in scalars.items() if "/" not in k}, **details_of_set}
            self.metrics[key].reset()
