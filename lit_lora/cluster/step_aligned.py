"""A checkpoint written inside a gradient-accumulation window resumes at the window's first micro-batch.

With ``accumulate_grad_batches`` > 1 Lightning may save between two optimizer steps: after a validation
(``val_check_interval`` counts micro-batches, so ``demo.yaml`` with ``accumulate_grad_batches: 3`` validates at
micro-batch 100, a third of the way into a step) or when ``max_time`` stops a run. The weights and the optimizer
are those of the last optimizer step, but the saved position counts the micro-batches already read for the next
one, whose half-accumulated gradients are not saved: a resume would skip them, and every step after would
differ from the uninterrupted run's. ``StepAlignedCheckpoints`` moves the saved position (Lightning's batch
progress and the ``ResumableDataLoader``'s) back to the window's start, so the resume reads those micro-batches
again and takes the same step. ``lit-lora`` adds it to every Trainer it builds (``cluster/runtime.py``), with
``PartialWindowCheck``. A resume from an epoch's last batch starts the next epoch at its first batch even where
that epoch is longer than the saved one (``read_as_an_ended_epoch``). Under DeepSpeed, which accumulates gradients
itself and cannot end a step early, the training loader pads every epoch to whole windows
(``lit_lora.data.resumable.unlabelled_tail``), and an epoch that ``limit_train_batches`` or a loader that does not
pad (a datamodule of the user's own) cuts inside a window stops at the start of training with the numbers, the
culprit and the fix::

    >>> micro_batches_past_step(ready=9, accumulate=2, epoch_batches=12)   # batch 9 (of 0-11) began step 5
    1
    >>> micro_batches_past_step(ready=12, accumulate=5, epoch_batches=12)  # the epoch's last step is shorter
    0
"""

from __future__ import annotations

import logging
import math

from lightning.pytorch import Callback

from lit_lora.errors import IncompatibleConfig

log = logging.getLogger("lit_lora")


def micro_batches_past_step(ready: int, accumulate: int, epoch_batches: float) -> int:
    """Micro-batches of this epoch read since its last optimizer step (0 at a step's end or the epoch's end)."""
    if accumulate <= 1 or ready >= epoch_batches:
        return 0
    return ready % accumulate


def stops_after_this_step(trainer) -> bool:
    """The step that just ended is the run's last: ``max_steps`` reached, or a stop asked for (``max_time``, early
    stopping, a signal) once ``min_steps`` / ``min_epochs`` are met (before that, Lightning trains on)."""
    if 0 < trainer.max_steps <= trainer.global_step:
        return True
    loop = trainer.fit_loop
    return trainer.should_stop and trainer.global_step >= (loop.min_steps or 0) \
        and trainer.current_epoch >= (loop.min_epochs or 0)


def rewind_fit_position(fit_loop_state: dict, micro_batches: int) -> None:
    """Move a checkpoint's training position ``micro_batches`` back: Lightning's batch progress (every counter of
    the epoch and of the run, so the resumed micro-batches keep their indices) and each resumable loader's.

    Lightning reads from the counters where in a batch a checkpoint was saved, and on a resume at a window's end it
    counts that window's step for the loggers (``_batches_that_stepped``) when the save came before the count, as
    one at ``on_train_batch_end`` does. The rewound position is always saved as such a batch's end, its step count
    lowered by the one Lightning adds back; at an epoch's start, as that epoch's first batch not begun.
    """
    progress = fit_loop_state["epoch_loop.batch_progress"]
    for scope in ("current", "total"):
        counters = progress[scope]
        for name in counters:
            counters[name] = max(0, counters[name] - micro_batches)
    at_a_window_end = progress["current"]["ready"] > 0
    for scope in ("current", "total"):
        progress[scope]["completed"] = progress[scope]["processed"] - at_a_window_end
    epoch_loop = fit_loop_state.get("epoch_loop.state_dict", {})
    if at_a_window_end and "_batches_that_stepped" in epoch_loop:
        epoch_loop["_batches_that_stepped"] -= 1
    for loader in fit_loop_state.get("state_dict", {}).get("combined_loader", []) or []:
        if isinstance(loader, dict) and "batches" in loader:
            loader["batches"] = max(0, loader["batches"] - micro_batches)


def read_as_an_ended_epoch(trainer) -> bool:
    """Make a resume from an epoch's last batch start the next epoch at its first batch, whatever its length.

    Lightning starts the next epoch afresh only where the saved batch count reaches this run's epoch length: resumed
    with a longer epoch (fewer ranks, a smaller batch or token budget), it would go on counting from the saved
    batch, train the next epoch's first batches only and end its steps off the loader's windows. The saved epoch
    ended (``is_last_batch``), so its count is moved to this run's epoch length, as if the epochs were alike.
    """
    loop = trainer.fit_loop.epoch_loop
    progress, batches = loop.batch_progress, trainer.num_training_batches
    if not (loop.restarting and progress.is_last_batch and not math.isinf(batches)):
        return False
    current = progress.current
    if current.ready >= batches:
        return False
    unfinished = current.processed - current.completed  # 1 where saved at the batch's end, before its count
    current.ready = current.started = current.processed = int(batches)
    current.completed = int(batches) - unfinished
    return True


class StepAlignedCheckpoints(Callback):
    """Every checkpoint of a fit resumes at an optimizer step's first micro-batch (see the module docstring)."""

    def __init__(self) -> None:
        self.said = False  # the log line comes once a run: with accumulation, every validation may be mid-step

    def on_train_start(self, trainer, pl_module) -> None:
        read_as_an_ended_epoch(trainer)  # after the loops are restored, before the epoch loop reads its position

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        fit_loop_state = (checkpoint.get("loops") or {}).get("fit_loop")
        if not fit_loop_state or "epoch_loop.batch_progress" not in fit_loop_state:
            return
        ready = fit_loop_state["epoch_loop.batch_progress"]["current"]["ready"]
        partial = micro_batches_past_step(ready, trainer.accumulate_grad_batches, trainer.num_training_batches)
        if partial:
            rewind_fit_position(fit_loop_state, partial)
        if partial and not self.said:
            self.said = True
            log.info("[lit-lora] checkpoint at step %d, %d micro-batch%s into the next step: a resume reads %s "
                     "again (and so for every checkpoint between two steps)", trainer.global_step, partial,
                     "" if partial == 1 else "es", "it" if partial == 1 else "them")


def partial_window_problem(batches: float, accumulate: int, strategy_accumulates: bool,
                           loader: str = "") -> str:
    """Why an epoch of ``batches`` micro-batches per rank would put the strategy's steps out of step with
    Lightning's ('' when it does not). ``loader``: the training loader's class when it is not lit-lora's
    ``ResumableDataLoader`` (which pads its epochs to whole windows, so only ``limit_train_batches`` can cut one)."""
    if not strategy_accumulates or accumulate <= 1 or math.isinf(batches) or batches % accumulate == 0:
        return ""
    below = int(batches) - int(batches) % accumulate
    why = ("DeepSpeed accumulates gradients itself and cannot end a step early, so its optimizer steps would drift "
           "from Lightning's (LR schedule, logged steps, checkpoints)")
    if loader:
        return (f"the training loader ({loader}) gives each epoch {int(batches)} micro-batches per rank, not a "
                f"whole number of trainer.accumulate_grad_batches={accumulate} windows: {why}; fix: a loader whose "
                f"length per rank is a multiple of {accumulate} (lit-lora's datamodules pad their epochs to whole "
                "windows), or a strategy that is not DeepSpeed")
    return (f"trainer.limit_train_batches gives each epoch {int(batches)} micro-batches per rank, not a whole "
            f"number of trainer.accumulate_grad_batches={accumulate} windows: {why}; fix: "
            f"trainer.limit_train_batches: {below or accumulate} (a multiple of {accumulate})")


class PartialWindowCheck(Callback):
    """Stops a fit whose epochs end inside an accumulation window the strategy cannot end early (see the module
    docstring)."""

    def on_train_start(self, trainer, pl_module) -> None:
        problem = partial_window_problem(trainer.num_training_batches, trainer.accumulate_grad_batches,
                                         bool(getattr(trainer.strategy, "handles_gradient_accumulation", False)),
                                         loader=_unpadded_loader(trainer))
        if problem:
            raise IncompatibleConfig(problem)


def _unpadded_loader(trainer) -> str:
    """The training loader's class name when it is not one that pads its epochs (and ``limit_train_batches`` is
    not what cut the epoch), else ''."""
    limit = trainer.limit_train_batches
    if limit is not None and limit != 1.0:
        return ""
    loaders = trainer.train_dataloader
    loaders = loaders if isinstance(loaders, (list, tuple)) else [loaders]
    odd = [type(loader).__name__ for loader in loaders
           if loader is not None and not hasattr(loader, "window_padding")]  # ResumableDataLoader's
    return ", ".join(odd)
