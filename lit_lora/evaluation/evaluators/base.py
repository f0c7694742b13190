"""What every evaluator is, and the pieces evaluators share (which stages generate, the train-overlap check).

An evaluator is an ``nn.Module`` child of the ``FineTuneModule`` it evaluates (its torchmetrics sync across ranks
with it; their states are not persistent, so checkpoints do not change). ``FineTuneModule`` puts it on the strategy's
device before each evaluation: under ZeRO-3 neither Lightning nor DeepSpeed moves the module (``zero.Init`` placed
its parameters), so metrics built in ``__init__`` would stay on the CPU beside a CUDA loss.
``FineTuneModule`` writes the Lightning hooks once and calls ``start`` / ``step`` / ``end``::

    >>> from lit_lora.evaluation.evaluators import LossEvaluator
    >>> evaluator = LossEvaluator()
    >>> evaluator.compares_generated_text, evaluator.extra_metrics   # compare refuses a module evaluated so
    (False, {})

In ``FineTuneModule``: ``on_validation_epoch_start`` -> ``evaluator.to(device).start(module, "val")``,
``validation_step`` -> ``evaluator.step(module, batch, "val", dataloader_idx)``, ``on_validation_epoch_end`` ->
``evaluator.end(module, "val")``; the same for test.

Evaluators read run-time data only from ``module.data_contract`` (``lit_lora.data.contract``) and settings from the
module (``module.evaluation``, ``module.label_names``), at the time they run: ``lit-lora compare`` and tests change
``module.evaluation`` between runs.
"""

from __future__ import annotations

import itertools
import logging
from typing import ClassVar, Optional

import torch
from torch import nn

from lit_lora.evaluation.overlap import check_overlap

log = logging.getLogger("lit_lora")


class Evaluator(nn.Module):
    """The evaluation of one kind of head: per-batch ``step``, per-epoch ``start`` / ``end``.

    ``extra_metrics`` holds the non-scalar results ``MetricsWriter`` puts under ``details`` in ``metrics.json``;
    ``predictions`` the generated rows of the last evaluation (``lit-lora compare`` reads both)."""

    compares_generated_text: ClassVar[bool] = False  # `lit-lora compare` scores its generated answers

    def __init__(self):
        super().__init__()
        self.extra_metrics: dict = {}
        self.predictions: list[dict] = []

    def start(self, module, stage: str) -> None:
        """Before the first batch of a validation (``stage`` ``"val"``) or test (``"test"``) epoch."""

    def step(self, module, batch: dict, stage: str, dataloader_idx: int) -> None:
        raise NotImplementedError

    def end(self, module, stage: str) -> None:
        """After the last batch: compute, log, reset."""


class LossEvaluator(Evaluator):
    """The model's own loss per batch as ``val_loss`` / ``test_loss`` (a plain ``FineTuneModule``)."""

    def step(self, module, batch: dict, stage: str, dataloader_idx: int) -> None:
        loss = module(batch).loss
        module.log(f"{stage}_loss", loss, prog_bar=stage == "val", sync_dist=True,
                   batch_size=batch["input_ids"].shape[0])


def full_evaluation(module, stage: str) -> bool:
    """``lit-lora test`` or ``validate``, not the validation inside ``fit``: the train-overlap check runs here."""
    return stage == "test" or module.trainer.state.fn == "validate"


def generates(module, stage: str) -> bool:
    """Whether this evaluation generates answers (``module.evaluation``: ``generate``, ``during_validation``)."""
    if not module.evaluation.generate:
        return False
    return full_evaluation(module, stage) or module.evaluation.during_validation


def overlap_with_training(module, split: str) -> Optional[dict]:
    """The overlap of ``split``'s prompts with the training prompts; fails unless ``allow_train_overlap`` (``None``
    when either has no prompt text)."""
    contract = module.data_contract
    train, evaluated = contract.prompts("train"), contract.prompts(split)
    if train is None or evaluated is None:
        return None
    overlap = check_overlap(train, evaluated, module.evaluation.allow_train_overlap, f"{contract.source} ({split})")
    if overlap.count:
        log.warning("[lit-lora] EVALUATED ON TRAINING ROWS: %s (allow_train_overlap is on)", overlap.sentence())
    return overlap.to_dict()


def gather_rows(rows: list[dict]) -> list[dict]:
    """Every rank's counted rows on every rank, in dataset order (a no-op without torch.distributed).

    ``CountedEvalSampler`` deals row ``i`` to rank ``i % world`` and puts the uncounted repeats last, so a
    rank's k-th counted row is row ``rank + k * world``: taking the ranks' rows in turn restores the order."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return rows
    parts: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, rows)
    return [row for turn in itertools.zip_longest(*parts) for row in turn if row is not None]
