"""Stop a run at the first non-finite training loss or gradient, instead of training (and exporting) NaN.

The CLI always adds the callback; in YAML it is the top-level key ``finite_guard:``::

    finite_guard:
      max_skipped_batches: 2   # skip up to 2 bad batches (each logged), stop at the 3rd; default 0

    lit-lora fit --config configs/demo.yaml --model.init_args.optim.lr 1e30
    # -> NonFiniteTrainingError: non-finite training loss (nan) at global step 1 (epoch 0, batch 1);
    #    last finite loss 7.6680 at global step 0. The run stopped before applying this step …

A skipped batch is a skipped optimizer step: its gradients are dropped (set to ``None``, which torch's
and bitsandbytes' optimizers step over: no update, no moment or weight-decay change). The decision is
taken on every rank together, so DDP / FSDP ranks never disagree. Under DeepSpeed the engine steps by
itself and keeps gradients in its own buffers: the loss is checked, and a bad batch always stops the run.
Under fp16 AMP the GradScaler already skips steps with overflowing gradients, so only the loss is checked.

A fit's validation loss that is not finite stops the run too (the weights can be finite while float16
outputs overflow). ``check_finite_weights`` is what the export paths call before writing an adapter or a checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable, Optional

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from lit_lora.errors import InputError

log = logging.getLogger("lit_lora")


class NonFiniteTrainingError(InputError, RuntimeError):
    """The training loss or the gradients became NaN / inf (more often than ``max_skipped_batches`` allows)."""


class NonFiniteWeightsError(InputError, ValueError):
    """Trainable weights hold NaN / inf: nothing is written from them."""


def non_finite_names(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors holding any NaN or inf (a ZeRO-3 parameter is checked on its local partition)."""
    bad = []
    for name, tensor in named_tensors:
        data = getattr(tensor, "ds_tensor", tensor)  # DeepSpeed ZeRO-3: the parameter itself is empty
        if data.is_floating_point() and data.numel() and not bool(torch.isfinite(data).all()):
            bad.append(name)
    return bad


def non_finite_error(bad: list[str], target: str) -> NonFiniteWeightsError:
    return NonFiniteWeightsError(
        f"refusing to write {target}: {len(bad)} trainable weight tensor(s) hold non-finite values (NaN or inf), "
        f"first: {', '.join(bad[:3])}. Training diverged: lower model.init_args.optim.lr, clip gradients "
        "(trainer.gradient_clip_val) or check the data, then train again from the last good checkpoint")


def check_finite_weights(pl_module: LightningModule, target: str, trainer: Optional[Trainer] = None) -> None:
    """Raise ``NonFiniteWeightsError`` when a trainable weight is NaN / inf; on every rank when one rank finds one.

    Call it on every rank before a collective save (ZeRO-3 / FSDP gather): the ranks decide together.
    """
    bad = non_finite_names((n, p) for n, p in pl_module.named_parameters() if p.requires_grad)
    if trainer is not None and trainer.strategy.reduce_boolean_decision(bool(bad), all=False) and not bad:
        raise NonFiniteWeightsError(f"refusing to write {target}: another rank holds non-finite trainable weights")
    if bad:
        raise non_finite_error(bad, target)


FLOAT16_HINT = (" float16 overflows past 65504: train in bfloat16 (trainer.precision bf16-mixed, model.init_args.dtype "
                "bfloat16) or float32.")


def runs_in_float16(trainer: Trainer, pl_module: LightningModule) -> bool:
    """float16 autocast or weights (``16-mixed``, ``16-true``, ``dtype: float16``), where activations overflow."""
    return str(trainer.precision).startswith("16") or \
        str(getattr(pl_module, "dtype_name", "")) in ("float16", "fp16", "half")


def non_finite_validation_message(bad: dict, trainer: Trainer, pl_module: LightningModule) -> str:
    """Why a run stopped on a non-finite validation loss, with the float16 hint where it applies."""
    losses = ", ".join(f"{name} {value}" for name, value in bad.items())
    where = "in the sanity check before training" if trainer.sanity_checking else \
        f"at global step {trainer.global_step}"
    hint = FLOAT16_HINT if runs_in_float16(trainer, pl_module) else \
        " Lower model.init_args.optim.lr or clip gradients (trainer.gradient_clip_val)."
    return (f"non-finite validation loss ({losses}) {where}: the model's outputs on the validation rows are not "
            f"finite although its weights are. The run stopped before exporting an adapter (a checkpoint of this "
            f"step, if one was written before the validation, holds these weights).{hint}")


def _uses_grad_scaler(trainer: Trainer) -> bool:
    return getattr(trainer.precision_plugin, "scaler", None) is not None


def _steps_by_itself(trainer: Trainer) -> bool:
    """DeepSpeed keeps gradients in its own buffers and steps them whatever ``param.grad`` says."""
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return isinstance(trainer.strategy, DeepSpeedStrategy)


class FiniteGuard(Callback):
    """Stop at a non-finite training loss or gradient, naming the global step and the last finite loss.

    Args:
        max_skipped_batches: Bad batches (non-finite loss or gradients) to skip, each with a warning,
            before the run stops. The count is kept in checkpoints, so it spans resumes. 0: stop at the first.
    """

    def __init__(self, max_skipped_batches: int = 0):
        if max_skipped_batches < 0:
            raise ValueError(f"finite_guard.max_skipped_batches must be >= 0, got {max_skipped_batches}")
        self.max_skipped_batches = max_skipped_batches
        self.skipped = 0
        self.last_finite: Optional[tuple[float, int]] = None  # (train_loss, global step) of the last good step
        self._losses: list[torch.Tensor] = []  # the losses backpropagated towards this optimizer step
        self._good_step: Optional[int] = None  # a step that passed, its train_loss read at the batch end
        self._batch_idx = 0

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch_idx = batch_idx

    def on_before_backward(self, trainer: Trainer, pl_module: LightningModule, loss: torch.Tensor) -> None:
        self._losses.append(loss.detach())

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer) -> None:
        losses, self._losses = self._losses, []
        grads = [] if _uses_grad_scaler(trainer) else [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        checks = [torch.isfinite(t).all() for t in losses] + [torch.isfinite(p.grad).all() for p in grads]
        finite = torch.stack([c.to(checks[0].device) for c in checks]).tolist() if checks else []  # one sync
        bad_here = not all(finite)
        if not trainer.strategy.reduce_boolean_decision(bad_here, all=False):
            self._good_step = trainer.global_step
            return
        what, detail = self._describe(losses, grads, finite, trainer)
        if self.skipped >= self.max_skipped_batches or _steps_by_itself(trainer):
            raise NonFiniteTrainingError(self._stop_message(what, detail, trainer))
        for group in optimizer.param_groups:  # an optimizer steps over parameters without a gradient
            for p in group["params"]:
                p.grad = None
        self.skipped += 1
        log.warning("[lit-lora] finite_guard: skipped the optimizer step at global step %d (batch %d of epoch %d): "
                    "%s%s; %d of %d allowed skips used", trainer.global_step, self._batch_idx, trainer.current_epoch,
                    what, f" ({detail})" if detail else "", self.skipped, self.max_skipped_batches)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Remember the ``train_loss`` the module logged for a step that passed (what the logs show)."""
        if self._good_step is None:
            return
        logged = trainer.callback_metrics.get("train_loss")
        if logged is not None and bool(torch.isfinite(torch.as_tensor(logged))):
            self.last_finite = (float(logged), self._good_step)
        self._good_step = None

    @staticmethod
    def _describe(losses: list, grads: list, finite: list[bool], trainer: Trainer) -> tuple[str, str]:
        """("non-finite training loss (nan)", "") or ("non-finite gradients", "in 3 tensors, first …")."""
        for loss, ok in zip(losses, finite):
            if not ok:
                return f"non-finite training loss ({loss.item()})", ""
        bad = [p for p, ok in zip(grads, finite[len(losses):]) if not ok]
        if bad:
            names = {id(p): n for n, p in trainer.lightning_module.named_parameters()}
            first = ", ".join(names.get(id(p), "?") for p in bad[:2])
            return "non-finite gradients", f"in {len(bad)} tensor(s), first {first}"
        return "non-finite training loss or gradients on another rank", ""

    def _stop_message(self, what: str, detail: str, trainer: Trainer) -> str:
        where = f"at global step {trainer.global_step} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        last = "no finite train_loss logged before it"
        if self.last_finite:
            last = f"last finite loss {self.last_finite[0]:.4f} at global step {self.last_finite[1]}"
        skipped = f"{self.skipped} bad batch{'es' if self.skipped != 1 else ''} already skipped"
        how = ("under DeepSpeed a bad batch cannot be skipped" if _steps_by_itself(trainer)
               else f"finite_guard.max_skipped_batches: {self.max_skipped_batches}, {skipped}")
        return (f"{what} {where}{f', {detail}' if detail else ''}; {last}. The run stopped before applying this "
                f"step and exported nothing from it ({how}). Lower model.init_args.optim.lr, clip gradients "
                "(trainer.gradient_clip_val), check this batch's data, or raise finite_guard.max_skipped_batches "
                "to skip a few bad batches")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """A fit's validation loss that is not finite stops the run before that validation's checkpoint: the
        weights may all be finite while the outputs overflow (float16 activations), which the checks on the
        training loss, the gradients and the weights do not see."""
        if trainer.state.fn != "fit":
            return
        bad = {name: float(value) for name, value in trainer.callback_metrics.items()
               if name.startswith("val") and "loss" in name and not torch.isfinite(torch.as_tensor(value)).all()}
        if bad:
            raise NonFiniteTrainingError(non_finite_validation_message(bad, trainer, pl_module))

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict) -> None:
        """Every save, whoever asks for it (``AdapterCheckpoint`` checks first and names its file; a preemption
        save or a ``trainer.save_checkpoint`` call is stopped here): no checkpoint of non-finite weights."""
        check_finite_weights(pl_module, f"a checkpoint at global step {trainer.global_step}", trainer)

    def state_dict(self) -> dict:
        return {"skipped": self.skipped}

    def load_state_dict(self, state_dict: dict) -> None:
        self.skipped = state_dict.get("skipped", 0)
