"""Callbacks the CLI always adds: adapter checkpoints, the final export, the base-vs-tuned figure and the
``metrics.json`` of ``validate`` / ``test``.

In YAML they are top-level keys (``checkpoint:``, ``export:``, ``baseline:``, ``metrics:``), e.g.::

    export:
      merge: true          # also write base + LoRA merged into a plain transformers model
    baseline:
      enabled: true        # validation loss of the base model before and of the tuned model after fit
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import Optional

import torch
from lightning.fabric.utilities import move_data_to_device
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_lora.cluster.fsdp_units import root_unit_gathered
from lit_lora.cluster.run_dir import run_dir
from lit_lora.cluster.sharding import run_device
from lit_lora.cluster.step_aligned import stops_after_this_step
from lit_lora.console import evaluation_lines, perplexity_text, scalar_metrics
from lit_lora.data.eval_sharding import without_uncounted_labels
from lit_lora.export import merge_and_save
from lit_lora.finite_guard import FLOAT16_HINT, NonFiniteTrainingError, NonFiniteWeightsError, \
    check_finite_weights, runs_in_float16
from lit_lora.memory import peak_memory
from lit_lora.strict_json import dumps

log = logging.getLogger("lit_lora")


def adapter_dir_for(checkpoint_path: str) -> Path:
    """``…/epoch=0-step=10.ckpt`` → ``…/epoch=0-step=10-adapter`` (the peft-format twin of a checkpoint)."""
    path = Path(checkpoint_path)
    return path.with_name(path.stem + "-adapter")


class AdapterCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that also writes the adapter in peft format beside each checkpoint.

    The ``.ckpt`` resumes training (trainable weights, optimizer, loop state); the ``-adapter``
    directory is what ``peft.PeftModel.from_pretrained`` (or ``from_pretrained`` for full fine-tuning)
    loads. Both are removed together when ``save_top_k`` rotates a checkpoint out. Neither is written
    from NaN / inf weights, nor (``save_on_exception``) when the run stopped on a non-finite loss.
    """

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        # in the run directory (its ``checkpoints/``) for every logger: Lightning's default for a W&B logger is
        # ``<save_dir>/<project>/<run id>/checkpoints``, outside the run directory the config and adapter are in
        if self.dirpath is None:
            self.dirpath = str(run_dir(trainer) / "checkpoints")
        super().setup(trainer, pl_module, stage)

    # _save_checkpoint / _remove_checkpoint / _should_skip_saving_checkpoint / _save_none_monitor_checkpoint /
    # _save_last_checkpoint / _monitor_candidates: private ModelCheckpoint methods, listed in
    # lit_lora.cluster.lightning_compat.PRIVATE_API (tests/test_lightning_compat.py checks they still exist)
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        check_finite_weights(trainer.lightning_module, f"checkpoint {filepath}", trainer)
        super()._save_checkpoint(trainer, filepath)
        # every rank: under ZeRO-3 / FSDP the adapter is gathered (a collective) before rank 0 writes it
        trainer.lightning_module.save_pretrained(adapter_dir_for(filepath))

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (NonFiniteTrainingError, NonFiniteWeightsError)):
            super().on_exception(trainer, pl_module, exception)

    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        # no monitor (the default: keep the latest): the step that ends the run is saved here, with the loops
        # inside the epoch, so a resume with a larger max_steps continues the epoch's batches; by on_train_end
        # the fit loop has counted the epoch as finished and a resume would skip the rest of it
        if self.monitor is None and stops_after_this_step(trainer) and not self._should_skip_saving_checkpoint(trainer):
            self._save_latest(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # a run that ended on max_epochs (or stopped after a validation) saves its final weights too, so the latest
        # checkpoint is the exported model and resuming from it continues the run (skipped when saved above)
        if self.monitor is None and not self._should_skip_saving_checkpoint(trainer):
            candidates = self._monitor_candidates(trainer)
            # the epoch the last step ran in: the fit loop has counted it as completed by now (epoch=1-step=3
            # for a 3-step run inside epoch 0)
            candidates["epoch"] = torch.tensor(max(trainer.current_epoch - 1, 0))
            self._save_latest(trainer, candidates)
        super().on_train_end(trainer, pl_module)

    def _save_latest(self, trainer: Trainer, candidates: dict) -> None:
        self._save_none_monitor_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)  # save_last: last.ckpt too, as every save does

    def _remove_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            shutil.rmtree(adapter_dir_for(filepath), ignore_errors=True)


class FinalExport(Callback):
    """At the end of fit, write the adapter (or full model) and a run summary to the run directory.

    Args:
        dirname: Directory (under the run directory) for the peft adapter or the full model.
        merge: Also merge LoRA into a freshly loaded, unquantized base and save a plain transformers model.
        merged_dirname: Directory (under the run directory) for the merged model.
        merge_dtype: Dtype of the merged model (``float32``, ``bfloat16``, ``float16``).
    """

    def __init__(self, dirname: str = "adapter", merge: bool = False, merged_dirname: str = "merged",
                 merge_dtype: str = "float32"):
        self.dirname = dirname
        self.merge = merge
        self.merged_dirname = merged_dirname
        self.merge_dtype = merge_dtype
        self.started = None
        self.earlier_s = 0.0       # training time before this process's start: a resume's earlier segments
        self.start_step = 0        # the global step this process started at (0, or the resumed checkpoint's)

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.started = time.perf_counter()  # after Lightning restored the callbacks' state (load_state_dict)

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start_step = trainer.global_step  # the loops are restored after on_fit_start

    def training_time_s(self) -> Optional[float]:
        """Training wall time over every segment of the run (a preempted and resumed run included)."""
        return None if self.started is None else self.earlier_s + time.perf_counter() - self.started

    def state_dict(self) -> dict:
        return {"training_time_s": self.training_time_s() or self.earlier_s}

    def load_state_dict(self, state_dict: dict) -> None:
        self.earlier_s = float(state_dict.get("training_time_s", 0.0))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        out_dir = run_dir(trainer)
        check_finite_weights(pl_module, f"the final export {out_dir / self.dirname}", trainer)
        out = pl_module.save_pretrained(out_dir / self.dirname)  # every rank: gathers under ZeRO-3 / FSDP
        if not trainer.is_global_zero:
            return
        memory, memory_kind = peak_memory()
        summary = {
            "model_name_or_path": pl_module.model_name_or_path,
            "method": pl_module.adapter.method,
            **pl_module.parameter_counts,
            "global_step": trainer.global_step,
            "wall_time_s": round(self.training_time_s(), 2) if self.started else None,  # every segment
            "resumed_at_step": self.start_step or None,
            "peak_memory_mib": round(memory, 1),
            "peak_memory_kind": memory_kind,
            "adapter_dir": str(out),
        }
        if self.merge:
            if not pl_module.adapter.spec().mergeable:
                raise ValueError("export.merge needs a LoRA / QLoRA adapter; full fine-tuning already saves a model")
            merged = merge_and_save(pl_module.model_name_or_path, out, out_dir / self.merged_dirname,
                                    type(pl_module).auto_model_class, self.merge_dtype, pl_module.tokenizer,
                                    **pl_module.architecture_kwargs())
            summary["merged_dir"] = str(merged)
        (out_dir / "run_summary.json").write_text(dumps(summary, indent=2))
        what = "the fully fine-tuned model" if pl_module.adapter.method == "full" else \
            f"the {pl_module.adapter.method} adapter"
        log.info("[lit-lora] saved %s to %s", what, out)  # a log line (stderr); the closing summary lists it too


@torch.no_grad()
def mean_validation_loss(trainer: Trainer, pl_module: LightningModule, limit_batches: Optional[int]) -> float:
    """Loss over the (first) validation dataloader, computed as ``val_loss`` is: summed over label tokens
    (rows for a classifier) and divided by their count, across ranks, each row counted once.

    So the "tuned" figure equals the ``val_loss`` in ``metrics.csv`` and ``lit-lora test``'s ``test_loss``
    on the same rows, whatever the batch size, the number of ranks and the precision (the Trainer's precision
    plugin's evaluation context: autocast under ``bf16-mixed``).
    """
    loader = trainer.datamodule.val_dataloader()
    if isinstance(loader, (list, tuple)):
        loader = loader[0]
    was_training = pl_module.training
    pl_module.eval()
    device = run_device(pl_module)  # not pl_module.device: the CPU under ZeRO-3, which moves no module
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.float64, device=device)
    with root_unit_gathered(pl_module):  # FSDP: these forwards bypass the root unit's, which gathers its weights
        for i, batch in enumerate(loader):
            if limit_batches is not None and i >= limit_batches:
                break
            with trainer.precision_plugin.val_step_context():  # bf16-mixed / 16-mixed: autocast, as val_loss has
                summed, n = pl_module.loss_terms(without_uncounted_labels(move_data_to_device(batch, device)))
            total += summed.double()
            count += n
    pl_module.train(was_training)
    total = trainer.strategy.reduce(total, reduce_op="sum")  # every rank calls this hook: a safe collective
    count = trainer.strategy.reduce(count, reduce_op="sum")
    return float(total / count.clamp(min=1))


class BaselineComparison(Callback):
    """Validation loss of the base model and of the tuned model, after fit; a full fine-tune's base before it.

    An adapter leaves the base frozen, so the base (adapter disabled) is scored after training, where it costs
    nothing before the first step; full fine-tuning changes the base, so it is scored before step 1.

    Prints the before/after figure, logs ``base/val_loss`` and ``tuned/val_loss``, and writes
    ``before_after.json`` to the run directory. A full fine-tune's base loss is kept in its checkpoints: a resumed
    or extended run, which cannot score the base it has changed, reports it still.

    Args:
        enabled: Measure and print the comparison.
        limit_batches: Validation batches to use (``None`` = all).
    """

    def __init__(self, enabled: bool = True, limit_batches: Optional[int] = None):
        self.enabled = enabled
        self.limit_batches = limit_batches
        self.base_loss: Optional[float] = None

    def state_dict(self) -> dict:
        return {"base_loss": self.base_loss}

    def load_state_dict(self, state_dict: dict) -> None:
        self.base_loss = state_dict.get("base_loss")

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # full fine-tuning changes the base itself: score it before step 1 (on a resume the checkpoint holds it)
        if self.enabled and not pl_module.is_peft and trainer.ckpt_path is None:
            self.base_loss = mean_validation_loss(trainer, pl_module, self.limit_batches)

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self.enabled:
            return
        if pl_module.is_peft:  # the frozen base, adapter off: the model step 1 started from, so training starts sooner
            with pl_module.model.disable_adapter():
                self.base_loss = mean_validation_loss(trainer, pl_module, self.limit_batches)
        tuned = mean_validation_loss(trainer, pl_module, self.limit_batches)
        result = {"base_val_loss": self.base_loss, "tuned_val_loss": tuned}
        for logger in trainer.loggers:
            logger.log_metrics({k.replace("_val_loss", "/val_loss"): v for k, v in result.items()
                                if v is not None}, step=trainer.global_step)
        out_dir = run_dir(trainer)  # every rank: log_dir is a broadcast
        if not trainer.is_global_zero:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "before_after.json").write_text(dumps(result, indent=2))
        if not math.isfinite(tuned):  # finite weights, outputs that overflow: the guard's checks cannot see it
            raise NonFiniteTrainingError(
                f"non-finite validation loss of the tuned model ({tuned}) after training: the adapter exported "
                f"to {out_dir} gives non-finite outputs on the validation rows; do not use it."
                f"{FLOAT16_HINT if runs_in_float16(trainer, pl_module) else ' Lower model.init_args.optim.lr.'}")
        if self.base_loss is None:
            print(f"[lit-lora] validation loss: tuned {tuned:.4f} (base not measured on a resumed full fine-tune)")
            return
        print(
            f"[lit-lora] validation loss: base {self.base_loss:.4f} -> tuned {tuned:.4f} "
            f"(delta {tuned - self.base_loss:+.4f}); perplexity {perplexity_text(self.base_loss)} -> "
            f"{perplexity_text(tuned)}"
        )


class MetricsWriter(Callback):
    """After ``lit-lora validate`` / ``test``, write the logged metrics to ``<run dir>/metrics.json``.

    Modules may add non-scalar results (confusion matrix, per-class scores, counts) to
    ``pl_module.extra_metrics`` (a dict); they are written under ``"details"``.

    Args:
        filename: File name under the run directory.
    """

    def __init__(self, filename: str = "metrics.json"):
        self.filename = filename

    def _write(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        out_dir = run_dir(trainer)  # every rank: log_dir is a broadcast
        if not trainer.is_global_zero:
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        scalars = scalar_metrics(trainer)
        result = {"stage": stage, "ckpt_path": trainer.ckpt_path, "metrics": scalars,
                  "details": getattr(pl_module, "extra_metrics", {})}
        (out_dir / self.filename).write_text(dumps(result, indent=2, default=str))
        eval_splits = getattr(trainer.datamodule, "eval_splits", None)
        splits = eval_splits(stage) if eval_splits else None
        print("\n".join(evaluation_lines(trainer, stage, result, out_dir / self.filename, splits)), flush=True)

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._write(trainer, pl_module, "validate")
