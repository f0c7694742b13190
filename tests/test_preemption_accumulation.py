"""A preemption signal in the middle of an accumulation window saves at the end of that optimizer
step, and the resumed run matches an uninterrupted one step by step.

Saving mid-window would lose the partly accumulated gradient: the resumed step would use the
remaining micro-batches only. 20 rows at batch size 2 make 10 batches an epoch; with
``accumulate_grad_batches: 4`` the steps end after batches 4, 8 and 10 (a short last window).
"""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch
from harness import adapter_tensors, demo_cli, fit, logged_steps, read_losses
from lightning.pytorch import Callback

from lit_lora.commands.train import LitLoraCLI
from lit_lora.cluster.preemption import PreemptionCheckpoint, Requeued

pytestmark = pytest.mark.faults
MAX_STEPS = 5
ACCUMULATE = 4


def cli_args(root: Path) -> list[str]:
    return ["--data.init_args.max_samples", "25", "--data.init_args.val_fraction", "0.2",
            "--data.init_args.batch_size", "2", "--data.init_args.max_length", "256",
            "--trainer.accumulate_grad_batches", str(ACCUMULATE), "--trainer.max_steps", str(MAX_STEPS),
            "--trainer.log_every_n_steps", "1", "--trainer.limit_val_batches", "0",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
            "--baseline.enabled", "false", "--preemption.requeue", "false"]


def cli(model_dir: str, root: Path) -> LitLoraCLI:
    return demo_cli(model_dir, root, *cli_args(root))


class SignalAtBatch(Callback):
    """Deliver the requeue signal while batch ``index`` of the first epoch trains (as SLURM would)."""

    def __init__(self, index: int, preemption: PreemptionCheckpoint):
        self.index, self.preemption = index, preemption

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.index:
            self.preemption._on_signal(signal.SIGUSR1, None)


def preemption_callback(run: LitLoraCLI) -> PreemptionCheckpoint:
    (callback,) = [c for c in run.trainer.callbacks if isinstance(c, PreemptionCheckpoint)]
    callback.signum = signal.SIGUSR1  # what setup() installs under SLURM with auto_requeue
    return callback


def test_signal_mid_window_saves_at_the_step_end_and_resumes_exactly(tiny_model, tmp_path):
    model_dir = tiny_model("llama")
    full = cli(model_dir, tmp_path / "full")
    fit(full)
    reference = read_losses(full.trainer.log_dir)
    assert sorted(reference) == list(range(1, MAX_STEPS + 1))

    first = cli(model_dir, tmp_path / "preempted")
    first.trainer.callbacks.append(SignalAtBatch(5, preemption_callback(first)))  # 2nd micro-batch of step 2
    with pytest.raises(Requeued):
        fit(first)
    assert first.trainer.global_step == 2  # the window of batches 5-8 finished before the save
    (ckpt,) = (tmp_path / "preempted").glob("hpc_ckpt_*.ckpt")
    before = read_losses(first.trainer.log_dir)

    resumed = cli(model_dir, tmp_path / "resumed")
    fit(resumed, ckpt_path=str(ckpt))
    after = read_losses(resumed.trainer.log_dir)
    assert sorted(before) == [1, 2] and sorted(after) == list(range(3, MAX_STEPS + 1))
    for step in range(1, MAX_STEPS + 1):
        got = before[step] if step <= 2 else after[step]
        assert got == pytest.approx(reference[step], rel=1e-5), (step, got, reference[step])


def test_a_checkpoint_validation_writes_mid_window_resumes_exactly(tiny_model, tmp_path):
    """``val_check_interval`` counts micro-batches: validating every 3 of them with steps of 4 saves inside
    windows (``step=1.ckpt`` after batch 6 of 8). The resume reads that window's micro-batches again, so every
    later step's loss and the final adapter are the uninterrupted run's (``cluster/step_aligned.py``)."""
    model_dir = tiny_model("llama")

    def validating(root: Path) -> LitLoraCLI:
        return demo_cli(
            model_dir, root, *cli_args(root), "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
            "--checkpoint.dirpath", str(root / "checkpoints"), "--checkpoint.filename", "{step}",
            "--checkpoint.save_top_k", "-1")

    full = validating(tmp_path / "full")
    fit(full)
    reference = read_losses(full.trainer.log_dir)
    ckpt = tmp_path / "full" / "checkpoints" / "step=1.ckpt"
    assert torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"][
        "ready"] == ACCUMULATE  # saved after batch 6 of the window 5-8: its position is the window's start
    resumed = validating(tmp_path / "resumed")
    fit(resumed, ckpt_path=str(ckpt))
    after = read_losses(resumed.trainer.log_dir)
    assert sorted(after) == list(range(2, MAX_STEPS + 1))
    for step in after:
        assert after[step] == pytest.approx(reference[step], rel=1e-6), (step, after[step], reference[step])
    final = [adapter_tensors(Path(run.trainer.log_dir) / "adapter") for run in (full, resumed)]
    assert all(torch.equal(final[0][name], final[1][name]) for name in final[0])


class StopAfterBatch(Callback):
    """Stop after batch ``index`` (1-based) of epoch ``epoch`` as ``max_time`` does: ``should_stop`` set in
    ``on_train_batch_end``, where lit-lora's checkpoint saves the run's last position."""

    def __init__(self, epoch: int, index: int):
        self.epoch, self.index = epoch, index

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx + 1 == self.index:
            trainer.should_stop = True


@pytest.mark.parametrize("epoch, batch, steps_done", [(0, 6, 1), (1, 2, 3)], ids=["mid-epoch", "epoch-start"])
def test_a_stop_inside_a_window_resumes_with_the_same_steps_logged(epoch, batch, steps_done, tiny_model, tmp_path):
    """A run stopped inside a window (``max_time``; lit-lora's checkpoint saves at ``on_train_batch_end``): after
    batch 6, in the window 5-8, whose start is a window's end, or after batch 2 of the second epoch, whose start
    is the epoch's. The saved position is the window's start; the resume logs every later step under its own
    number, as the uninterrupted run does (Lightning adds a step on resuming at a window's end, which the saved
    step count already holds), with the same loss."""
    model_dir = tiny_model("llama")

    def run(root: Path, *callbacks: Callback) -> LitLoraCLI:
        cli_run = demo_cli(model_dir, root, *cli_args(root), "--checkpoint.dirpath", str(root / "checkpoints"))
        cli_run.trainer.callbacks[:0] = callbacks  # before the checkpoint, as Lightning's Timer is
        return cli_run

    full = run(tmp_path / "full")
    fit(full)
    stopped = run(tmp_path / "stopped", StopAfterBatch(epoch, batch))
    fit(stopped)
    (ckpt,) = (tmp_path / "stopped" / "checkpoints").glob("*.ckpt")
    assert stopped.trainer.global_step == steps_done and torch.load(ckpt, weights_only=False)["loops"]["fit_loop"][
        "epoch_loop.batch_progress"]["current"]["ready"] == batch - batch % ACCUMULATE
    resumed = run(tmp_path / "resumed")
    fit(resumed, ckpt_path=str(ckpt))
    assert logged_steps(stopped.trainer.log_dir) == list(range(steps_done))
    assert logged_steps(resumed.trainer.log_dir) == list(range(steps_done, MAX_STEPS))  # logged 0-based
    reference, after = read_losses(full.trainer.log_dir), read_losses(resumed.trainer.log_dir)
    for step in after:
        assert after[step] == pytest.approx(reference[step], rel=1e-6), (step, after[step], reference[step])


def test_only_a_strategy_that_accumulates_itself_is_stopped_by_an_epoch_cut_inside_a_window():
    from lit_lora.cluster.step_aligned import partial_window_problem

    problem = partial_window_problem(7, 4, strategy_accumulates=True)
    assert "each epoch 7 micro-batches per rank, not a whole number of trainer.accumulate_grad_batches=4" in problem
    assert problem.endswith("fix: trainer.limit_train_batches: 4 (a multiple of 4)")
    assert partial_window_problem(2, 4, strategy_accumulates=True).endswith("limit_train_batches: 4 (a multiple of 4)")
    assert partial_window_problem(7, 4, strategy_accumulates=False) == ""  # Lightning steps at the epoch's end
    assert partial_window_problem(8, 4, strategy_accumulates=True) == ""
    assert partial_window_problem(float("inf"), 4, strategy_accumulates=True) == ""  # an iterable of unknown length


def test_an_epoch_cut_inside_a_window_by_a_loader_that_does_not_pad_names_the_loader():
    """A user's own loader (not lit-lora's, which pads its epochs to whole windows) is what the message blames,
    unless ``limit_train_batches`` cut the epoch."""
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from lit_lora.cluster.step_aligned import _unpadded_loader, partial_window_problem
    from lit_lora.data.resumable import ResumableDataLoader

    own, padded = DataLoader(list(range(7))), ResumableDataLoader(list(range(7)), batch_size=1)
    assert _unpadded_loader(SimpleNamespace(limit_train_batches=1.0, train_dataloader=own)) == "DataLoader"
    assert _unpadded_loader(SimpleNamespace(limit_train_batches=None, train_dataloader=[padded, own])) == "DataLoader"
    assert _unpadded_loader(SimpleNamespace(limit_train_batches=1.0, train_dataloader=padded)) == ""
    assert _unpadded_loader(SimpleNamespace(limit_train_batches=7, train_dataloader=own)) == ""
    problem = partial_window_problem(7, 4, strategy_accumulates=True, loader="DataLoader")
    assert problem.startswith("the training loader (DataLoader) gives each epoch 7 micro-batches per rank")
    assert "limit_train_batches" not in problem and "a multiple of 4" in problem
