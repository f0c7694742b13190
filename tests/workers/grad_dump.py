"""A callback for tests: save the gradients of the first optimizer step (after accumulation and the
data-parallel all-reduce, before clipping) to ``$GRAD_DUMP`` and the step's logged loss beside them.

    lit-lora fit ... --trainer.callbacks+=grad_dump.FirstStepGradients   # with tests/workers on PYTHONPATH
"""

from __future__ import annotations

import os

import torch
from lightning.pytorch import Callback


class FirstStepGradients(Callback):
    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step != 0 or not trainer.is_global_zero:
            return
        grads = {name: p.grad.detach().clone() for name, p in pl_module.named_parameters()
                 if p.requires_grad and p.grad is not None}
        torch.save(grads, os.environ["GRAD_DUMP"])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = trainer.callback_metrics.get("train_loss")
        if trainer.global_step == 1 and trainer.is_global_zero and loss is not None:
            torch.save(float(loss), os.environ["GRAD_DUMP"] + ".loss")


class FirstStepGradNorm(Callback):
    """DeepSpeed's global gradient norm of the first optimizer step (its engine holds the gradients, partitioned)
    to ``$GRAD_DUMP``."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 and trainer.is_global_zero and not os.path.exists(os.environ["GRAD_DUMP"]):
            torch.save(float(trainer.strategy.deepspeed_engine.get_global_grad_norm()), os.environ["GRAD_DUMP"])
