"""Optimizers (torch AdamW, bitsandbytes 8-bit and paged AdamW) and warmup schedules.

    optim:
      name: paged_adamw_8bit
      lr: 2.0e-5
      weight_decay: 0.01
      warmup_steps: 10
      scheduler: cosine
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Literal, Optional, Union

import torch

from lit_lora.errors import IncompatibleConfig

log = logging.getLogger("lit_lora")

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
        scheduler: ``constant``, ``linear`` (to zero) or ``cosine`` (to zero) after the warmup; the last two decay
            over the run's length, so need ``trainer.max_steps`` (or ``max_epochs`` over data of known length).
        warmup_steps: Optimizer steps of linear warmup from zero.
    """

    name: Literal["adamw", "adamw_8bit", "paged_adamw", "paged_adamw_8bit"] = "adamw"
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    scheduler: Literal["constant", "linear", "cosine"] = "cosine"
    warmup_steps: int = 0

    def __post_init__(self):
        """Refuse a value torch would refuse only once the model is loaded and the data tokenised (on a cluster,
        after the queue and a baseline evaluation), named as its config key."""
        problems = [f"{name} must be above 0, got {value!r}" for name, value in (("lr", self.lr), ("eps", self.eps))
                    if not value > 0]
        problems += [f"{name} must be at least 0, got {value!r}"
                     for name, value in (("weight_decay", self.weight_decay), ("warmup_steps", self.warmup_steps))
                     if not value >= 0]
        if len(self.betas) != 2 or not all(0 <= beta < 1 for beta in self.betas):
            problems.append(f"betas must be two numbers each at least 0 and below 1, got {tuple(self.betas)!r}")
        if problems:
            raise IncompatibleConfig("model.init_args.optim." + "; model.init_args.optim.".join(problems))


def optimizer_class(name: str):
    if name == "adamw":
        return torch.optim.AdamW
    import bitsandbytes as bnb

    return {"adamw_8bit": bnb.optim.AdamW8bit, "paged_adamw": bnb.optim.PagedAdamW,
            "paged_adamw_8bit": bnb.optim.PagedAdamW8bit}[name]


def offloads_optimizer(trainer) -> bool:
    """Whether ``trainer`` runs DeepSpeed with the optimizer offloaded (ZeRO ``offload_optimizer`` to cpu / nvme) and
    DeepSpeed's default ``zero_force_ds_cpu_optimizer``: its engine then refuses any optimizer but its own CPU Adam
    (``ZeRORuntimeException`` at the start of training, the ``deepspeed_zero3_offload.yaml`` fragment included)."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    from lit_lora.cluster.strategy_config import from_deepspeed_config

    strategy = getattr(trainer, "strategy", None)
    if not isinstance(strategy, DeepSpeedStrategy) or not isinstance(getattr(strategy, "config", None), dict):
        return False
    forced = strategy.config.get("zero_force_ds_cpu_optimizer", True)
    return from_deepspeed_config(strategy.config).offload_optimizer and bool(forced)


def deepspeed_cpu_adam(groups: list[dict], lr: float, betas: tuple[float, float], eps: float):
    """``optim.name: adamw`` as DeepSpeed's CPU AdamW (decoupled weight decay, the same per-group decay and rates;
    the learning-rate schedule steps its groups as torch's)."""
    from deepspeed.ops.adam import DeepSpeedCPUAdam

    return DeepSpeedCPUAdam(groups, lr=lr, betas=betas, eps=eps, adamw_mode=True)


def param_groups(model: torch.nn.Module, weight_decay: float, wrapper: Optional[torch.nn.Module] = None) -> list[dict]:
    """Weight decay on matrices only: biases and norm weights (1-D) are not decayed.

    Each weight is classed by the shape it was created with, so the groups are the same on one device, under FSDP
    and under ZeRO-3, which both hide that shape by the time ``configure_optimizers`` runs: FSDP leaves a 1-D view
    of this rank's shard (its unit keeps the shape; ``wrapper``: the FSDP root around ``model``, if any), ZeRO-3
    an empty tensor (the shape in ``ds_shape``).
    """
    flattened = _flattened_ndims([model] if wrapper is None else [model, wrapper])
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            ndim = len(p.ds_shape) if hasattr(p, "ds_shape") else flattened.get(id(p), p.ndim)
            (decay if ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _flattened_ndims(modules: list[torch.nn.Module]) -> dict[int, int]:
    """``id(weight) -> ndim`` of the weights FSDP (``use_orig_params``) flattened into the units within ``modules``,
    read from each unit's flat parameter (``_params`` and ``_shapes``, beside the ``_fqns`` of
    ``cluster/fsdp_units.py``): a weight's own tensor is a 1-D shard view, or empty on a rank holding none of it."""
    ndims: dict[int, int] = {}
    for root in modules:
        for module in root.modules():
            flat = getattr(getattr(module, "_handle", None), "flat_param", None)
            if getattr(flat, "_params", None) is not None:
                ndims.update((id(p), len(shape)) for p, shape in zip(flat._params, flat._shapes))
    return ndims


def lr_lambda(scheduler: str, warmup_steps: int, total_steps: Union[int, Callable[[], int]]):
    """The schedule's factor at each optimizer step. ``total_steps`` may be a function: it is asked once, at
    the first step after the warmup, so building the schedule does not need the length of training."""
    total: list[int] = []

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        if scheduler == "constant" or step <= warmup_steps:
            return 1.0
        if not total:
            total.append(total_steps() if callable(total_steps) else total_steps)
        progress = min(1.0, (step - warmup_steps) / max(1, total[0] - warmup_steps))
        return 1.0 - progress if scheduler == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def build_optimizer(settings: OptimizerSettings, model: torch.nn.Module, trainer) -> dict:
    """Lightning's ``configure_optimizers`` return value, stepping the schedule every optimizer step.

    The schedule's length (``trainer.estimated_stepping_batches``) is read at the first step after the warmup,
    not here: with ``max_epochs`` set, reading it loads the train dataloader before Lightning restores a
    checkpoint, and Lightning then never hands the loader its saved position (a mid-epoch resume would
    train the epoch's first batches again).
    """
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("nothing to train: every weight is frozen (adapter NoAdapter?); evaluate with "
                         "`lit-lora test` / `lit-lora incontext`, or choose a LoRA / QLoRA / full adapter to fit")
    wrapper = getattr(getattr(trainer, "strategy", None), "model", None)  # FSDP's root unit wraps the module
    make = deepspeed_cpu_adam if settings.name == "adamw" and offloads_optimizer(trainer) else \
        optimizer_class(settings.name)
    optimizer = make(param_groups(model, settings.weight_decay, wrapper), lr=settings.lr, betas=settings.betas,
                     eps=settings.eps)

    def total_steps() -> int:
        if trainer is None:
            return 1
        check_schedule_length(settings, trainer, data_loaded=True)
        return int(trainer.estimated_stepping_batches)

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(settings.scheduler, settings.warmup_steps,
                                                                      total_steps))
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step", "name": "lr"}}


def check_schedule_length(settings: OptimizerSettings, trainer, data_loaded: bool = False) -> None:
    """Refuse a linear or cosine schedule over a run of unknown length: it would decay over no steps and train at
    a learning rate of 0 from the first step after the warmup on.

    Without ``data_loaded`` only the trainer's settings are read (the base model need not be loaded for it); with
    it, the length of the train loader too (an iterable one has none), which must not be loaded before Lightning
    restores a checkpoint (see ``build_optimizer``).
    """
    if settings.scheduler == "constant" or trainer is None:
        return
    steps, epochs = trainer.max_steps, trainer.max_epochs
    if steps is not None and steps >= 0:
        return
    if epochs is None or epochs < 0:
        why = f"trainer.max_steps ({steps}) and trainer.max_epochs ({epochs}) are unset: the run ends at " \
              "trainer.max_time, or never"
    elif data_loaded and not 0 <= trainer.estimated_stepping_batches < math.inf:
        why = "trainer.max_steps is unset and the training data has no length (an iterable dataset), so " \
              f"trainer.max_epochs ({epochs}) gives no number of steps"
    else:
        return
    raise IncompatibleConfig(
        f"model.init_args.optim.scheduler: {settings.scheduler} decays the learning rate to 0 over the run's "
        f"optimizer steps, and their number is unknown: {why}; fix: set trainer.max_steps (or trainer.max_epochs, "
        "over data of known length), or model.init_args.optim.scheduler: constant")


def continue_schedule(trainer, settings: OptimizerSettings) -> None:
    """On a resume, the learning rate of this run's schedule at the restored step.

    The checkpoint holds the rate its own schedule had reached. A resume with another ``trainer.max_steps`` (or
    ``max_epochs``) gives a linear or cosine schedule another length: without this, its first step would train
    at the old rate (0 where the old schedule had ended) and only the next ones on the new schedule. With the
    same length the rate is the checkpoint's, to the bit (``LambdaLR`` computes it the same way). Called when
    training starts, resumed or not, it also refuses a schedule over data of no length (``check_schedule_length``)."""
    check_schedule_length(settings, trainer, data_loaded=True)
    for config in getattr(trainer, "lr_scheduler_configs", []):
        schedule = config.scheduler
        if not isinstance(schedule, torch.optim.lr_scheduler.LambdaLR) or schedule.last_epoch <= 0:
            continue
        step, groups = schedule.last_epoch, schedule.optimizer.param_groups
        rates = [base * factor(step) for base, factor in zip(schedule.base_lrs, schedule.lr_lambdas)]
        if rates[0] != groups[0]["lr"] and trainer.is_global_zero:
            log.warning("[lit-lora] resumed at step %d: the checkpoint's learning rate %.4g came from a schedule of "
                        "another length; this run's %s schedule over %s steps (trainer.max_steps / max_epochs) "
                        "continues at %.4g", step, groups[0]["lr"], settings.scheduler,
                        trainer.estimated_stepping_batches, rates[0])
        for group, lr in zip(groups, rates):
            group["lr"] = lr
