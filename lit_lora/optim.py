"""Optimizers (torch AdamW, bitsandbytes 8-bit and paged AdamW) and warmup schedules.

    optim:
      name: paged_adamw_8bit
      lr: 2.0e-5
      weight_decay: 0.01
      warmup_steps: 10
      scheduler: cosine
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit")


@dataclass(frozen=True)
class OptimizerSettings:
    """Optimizer and learning-rate schedule of a run.

    Args:
        name: ``adamw`` (torch), ``adamw_8bit``, ``paged_adamw`` or ``paged_adamw_8bit`` (bitsandbytes).
        lr: Peak learning rate.
        weight_decay: Decoupled weight decay, not applied to biases and norm weights.
        betas: Adam betas.
        eps: Adam epsilon.
        scheduler: ``constant``, ``linear`` (to zero) or ``cosine`` (to zero) after the warmup.
        warmup_steps: Optimizer steps of linear warmup from zero.
    """

    name: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = 0


def optimizer_class(name: str):
    if name == "adamw":
        return torch.optim.AdamW
    import bitsandbytes as bnb

    return {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW,
            "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: biases and norm weights (1-D) are not decayed."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def lr_lambda(scheduler: str, warmup_steps: int, total_steps: int):
    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 1.0 - progress if scheduler == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(settings: OptimizerSettings, model: torch.nn.Module, trainer) -> dict:
    """Lightning's ``configure_optimizers`` return value, stepping the schedule every optimizer step."""
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: every weight is frozen (adapter NoAdapter?); evaluate with "
                         "`lit-lora test` / `lit-lora incontext`, or choose a LoRA / QLoRA / full adapter to fit")
    optimizer = optimizer_class(settings.name)(
        param_groups(model, settings.weight_decay), lr=settings.lr, betas=settings.betas, eps=settings.eps
    )
    total = trainer.estimated_stepping_batches if trainer is not None else 1
    total = int(total) if math.isfinite(total) else settings.warmup_steps + 1
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings.scheduler, settings.warmup_steps, total))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "lr"}}
