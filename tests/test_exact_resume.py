"""An interrupted run resumed from its mid-epoch checkpoint equals the same run left uninterrupted.

Both runs parse ``configs/demo.yaml`` through the CLI (tiny Llama, LoRA, dropout 0 and 0.1, cosine schedule
over ``max_steps``; once with ``max_epochs`` set as well). 20 training rows at batch size 4 make 5 batches an epoch. Two interruptions:

* after step 4, in the middle of epoch 0: the resumed steps 5-8 finish epoch 0 and cross into
  epoch 1 (a new sampler epoch);
* after step 5, the last batch of epoch 0: the checkpoint records a finished epoch, and the resumed
  run must start epoch 1 at its first batch (not skip into it by the 5 batches of epoch 0).

The interrupted run keeps the same ``max_steps`` (the schedule depends on it) and is killed right
after the checkpoint is written; the resumed run passes ``ckpt_path``. The mid-epoch case also runs under
``bf16-mixed`` (CPU autocast), the setting lit-lora suggests on CPUs with native bfloat16.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import KillBeforeStep, Killed, adapter_tensors, fit, read_losses, resumable_demo_cli

MAX_STEPS = 8
BATCHES_PER_EPOCH = 5
LOSS_RTOL = 1e-5      # per-step training loss, relative
WEIGHT_ATOL = 1e-6    # final LoRA weights, absolute (float32 on CPU: the same ops in the same order)


def cli(model_dir: str, root: Path, every: int, precision: str = "32-true", dropout: float = 0.0,
        max_epochs: int = -1):
    return resumable_demo_cli(model_dir, root, every, MAX_STEPS, "--data.init_args.batch_size", "4",
                              "--data.init_args.max_length", "256", "--trainer.precision", precision,
                              "--model.init_args.adapter.init_args.dropout", str(dropout),
                              "--trainer.max_epochs", str(max_epochs))


@pytest.mark.parametrize(("stop_at", "precision", "dropout", "max_epochs"),
                         [(4, "32-true", 0.0, -1), (BATCHES_PER_EPOCH, "32-true", 0.0, -1), (4, "bf16-mixed", 0.0, -1),
                          (4, "32-true", 0.1, -1), (BATCHES_PER_EPOCH, "32-true", 0.1, -1), (4, "32-true", 0.0, 2)],
                         ids=["mid-epoch", "end-of-epoch", "mid-epoch-bf16-mixed", "mid-epoch-dropout",
                              "end-of-epoch-dropout", "mid-epoch-max-epochs"])
def test_interrupted_and_resumed_run_equals_an_uninterrupted_one(stop_at, precision, dropout, max_epochs, tiny_model,
                                                                  tmp_path):
    """With LoRA dropout on, the resumed steps draw the masks the uninterrupted ones drew (``StepSeed``). With
    ``max_epochs`` set, the cosine schedule's length (``estimated_stepping_batches``) is not read before the
    checkpoint's loader position is restored."""
    model_dir = tiny_model("llama")
    cli_args = (precision, dropout, max_epochs)

    full = cli(model_dir, tmp_path / "full", stop_at, *cli_args)
    fit(full)
    assert len(full.datamodule.datasets["train"]) == 4 * BATCHES_PER_EPOCH
    assert full.trainer.global_step == MAX_STEPS
    reference = read_losses(full.trainer.log_dir)
    assert sorted(reference) == list(range(1, MAX_STEPS + 1))

    first = cli(model_dir, tmp_path / "interrupted", stop_at, *cli_args)
    first.trainer.callbacks.append(KillBeforeStep(stop_at))
    with pytest.raises(Killed):
        fit(first)
    assert first.trainer.global_step == stop_at
    ckpt = tmp_path / "interrupted" / "checkpoints" / f"step={stop_at}.ckpt"
    assert ckpt.is_file()
    before = read_losses(first.trainer.log_dir)
    assert sorted(before) == list(range(1, stop_at + 1))
    state = torch.load(ckpt, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["batches"]) == (0, stop_at)  # position of the train loader in epoch 0

    resumed = cli(model_dir, tmp_path / "resumed", stop_at, *cli_args)
    fit(resumed, ckpt_path=str(ckpt))
    assert resumed.trainer.global_step == MAX_STEPS
    assert resumed.trainer.current_epoch == full.trainer.current_epoch
    after = read_losses(resumed.trainer.log_dir)
    assert sorted(after) == list(range(stop_at + 1, MAX_STEPS + 1))  # every step after the resume, once

    # Step by step: a repeated or skipped batch shifts the sequence and changes the losses.
    for step in range(1, MAX_STEPS + 1):
        got = before[step] if step <= stop_at else after[step]
        assert got == pytest.approx(reference[step], rel=LOSS_RTOL), (step, got, reference[step])
    assert len(set(round(v, 6) for v in reference.values())) == MAX_STEPS  # losses tell the batches apart

    expected = adapter_tensors(Path(full.trainer.log_dir) / "adapter")
    got = adapter_tensors(Path(resumed.trainer.log_dir) / "adapter")
    assert set(got) == set(expected) and len(expected) > 0
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)
    at_interrupt = adapter_tensors(tmp_path / "interrupted" / "checkpoints" / f"step={stop_at}-adapter")
    assert any(not torch.equal(at_interrupt[n], t) for n, t in expected.items())  # steps 5-8 did train


def extended_run(model_dir: str, tmp_path: Path, scheduler: str, first: int = 3, total: int = 6) -> tuple[Path, Path]:
    """A ``total``-step run, and a ``first``-step run resumed from the checkpoint of its last step to ``total``
    steps (no periodic checkpoint: the final step's own); their run directories."""
    settings = ("--data.init_args.batch_size", "4", "--data.init_args.max_length", "256",
                "--model.init_args.optim.scheduler", scheduler, "--model.init_args.optim.warmup_steps", "0",
                "--checkpoint.every_n_train_steps", "0")

    def run(root: Path, max_steps: int, ckpt_path=None) -> Path:
        cli = resumable_demo_cli(model_dir, root, BATCHES_PER_EPOCH, max_steps, *settings)
        fit(cli, ckpt_path=ckpt_path)
        return Path(cli.trainer.log_dir)

    full = run(tmp_path / "full", total)
    run(tmp_path / "first", first)
    (ckpt,) = (tmp_path / "first" / "checkpoints").glob("*.ckpt")
    assert ckpt.name == f"step={first}.ckpt"
    return full, run(tmp_path / "resumed", total, ckpt)


@pytest.mark.parametrize("first, total", [(3, 6), (BATCHES_PER_EPOCH, 8)], ids=["mid-epoch", "end-of-epoch"])
def test_a_run_ended_by_max_steps_continues_its_epoch_when_extended(tiny_model, tmp_path, first, total):
    """The checkpoint of the step that ends a run resumes inside its epoch: a longer ``max_steps`` trains the
    epoch's remaining batches (none after the epoch's last one), as the uninterrupted longer run does (at a
    constant learning rate, which does not depend on ``max_steps``, the two runs are the same run)."""
    full, resumed = extended_run(tiny_model("llama"), tmp_path, "constant", first, total)
    reference, after = read_losses(full), read_losses(resumed)
    assert sorted(after) == list(range(first + 1, total + 1))
    for step in after:  # mid-epoch: steps 4 and 5 finish epoch 0; skipping them would train epoch 1's batches
        assert after[step] == pytest.approx(reference[step], rel=LOSS_RTOL), (step, after, reference)
    expected, got = adapter_tensors(full / "adapter"), adapter_tensors(resumed / "adapter")
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


def test_an_extended_cosine_run_continues_on_the_longer_schedule(tiny_model, tmp_path, caplog):
    """The 3-step cosine had reached 0; resumed to 6 steps, steps 4-6 train at the 6-step cosine's rates (not 0
    at step 4, the checkpoint's rate), and the log says so."""
    full, resumed = extended_run(tiny_model("llama"), tmp_path, "cosine")
    reference, after = read_losses(full, "lr"), read_losses(resumed, "lr")
    assert [after[s] for s in (4, 5, 6)] == pytest.approx([reference[s] for s in (4, 5, 6)], rel=1e-12)
    assert after[4] > 0
    assert "continues at" in caplog.text and "schedule over 6 steps" in caplog.text


def test_a_stop_asked_for_before_min_steps_is_not_the_last_step():
    """Early stopping or max_time before min_steps / min_epochs: Lightning trains on (should_stop stays set),
    so the final-step checkpoint waits for the step that really ends the run."""
    from types import SimpleNamespace

    from lit_lora.cluster.step_aligned import stops_after_this_step

    def trainer(step, should_stop, min_steps=None, min_epochs=None, max_steps=-1, epoch=0):
        return SimpleNamespace(max_steps=max_steps, global_step=step, should_stop=should_stop, current_epoch=epoch,
                               fit_loop=SimpleNamespace(min_steps=min_steps, min_epochs=min_epochs))

    assert stops_after_this_step(trainer(3, False, max_steps=3))
    assert not stops_after_this_step(trainer(2, False, max_steps=3))
    assert stops_after_this_step(trainer(2, True))
    assert not stops_after_this_step(trainer(2, True, min_steps=8)) and stops_after_this_step(trainer(8, True, min_steps=8))
    assert not stops_after_this_step(trainer(9, True, min_epochs=2, epoch=1))
    assert stops_after_this_step(trainer(12, True, min_epochs=2, epoch=2))


class BatchesSeen:
    """Lightning callback recording (epoch, batch_idx, micro-batches in the batch's step window, labelled rows)."""

    def __init__(self):
        self.batches = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        rows = {tuple(ids[labels != -100].tolist()) for ids, labels in zip(batch["input_ids"], batch["labels"])}
        self.batches.append((trainer.current_epoch, batch_idx, len(batch["step_labels"]), rows))


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_resume_at_an_epochs_end_into_a_longer_epoch_trains_all_of_it(tiny_model, tmp_path, accumulate):
    """Batch 4 → 2 at an epoch's end (as a requeue on fewer ranks): the next epoch has twice the batches. Lightning
    would start it at the saved batch count, train half of it and end its steps off the loader's windows; it
    trains every row, from batch 0, in windows of ``accumulate``."""
    from lightning.pytorch.callbacks import LambdaCallback

    model_dir = tiny_model("llama")
    first = resumable_demo_cli(model_dir, tmp_path / "first", BATCHES_PER_EPOCH, BATCHES_PER_EPOCH,
                               "--data.init_args.batch_size", "4")
    fit(first)
    ckpt = tmp_path / "first" / "checkpoints" / f"step={BATCHES_PER_EPOCH}.ckpt"
    epoch = 2 * BATCHES_PER_EPOCH // accumulate  # optimizer steps of a batch-2 epoch
    resumed = resumable_demo_cli(model_dir, tmp_path / "resumed", 1000, BATCHES_PER_EPOCH + epoch,
                                 "--data.init_args.batch_size", "2", "--trainer.accumulate_grad_batches", str(accumulate))
    seen = BatchesSeen()
    resumed.trainer.callbacks.append(LambdaCallback(on_train_batch_start=seen.on_train_batch_start))
    fit(resumed, ckpt_path=str(ckpt))

    assert [(epoch_index, index) for epoch_index, index, _, _ in seen.batches] == \
        [(1, index) for index in range(2 * BATCHES_PER_EPOCH)]
    assert {window for _, _, window, _ in seen.batches} == {accumulate}
    trained = set().union(*(rows for *_, rows in seen.batches))
    assert len(trained) == len(resumed.datamodule.datasets["train"]) == 4 * BATCHES_PER_EPOCH
