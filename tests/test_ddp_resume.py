"""A two-rank DDP run (gloo, CPU) ended by ``max_steps`` mid-epoch and resumed with a larger ``max_steps`` equals
the uninterrupted longer run (per-step loss and final LoRA weights), and its checkpoint resumed on one rank
stops with the one-line world-size error instead of training other rows; a one-rank checkpoint at an epoch's end
continues on two ranks.

20 training rows, 2 ranks × batch 2: 5 steps an epoch; the first run stops after step 3 and the resumed one
finishes epoch 0 and crosses into epoch 1 (a new sampler epoch on each rank).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import adapter_tensors, demo_args, metrics_dir, output, read_losses, run_cli_subprocess

pytestmark = pytest.mark.slow
FIRST, TOTAL = 3, 7


def run(model_dir: str, root: Path, devices: int, max_steps: int, ckpt: Path | None = None, check: bool = True):
    args = ["fit", *demo_args(model_dir, root,
            "--data.init_args.max_samples", "25", "--data.init_args.val_fraction", "0.2",
            "--data.init_args.batch_size", str(4 // devices), "--data.init_args.max_length", "256",
            "--trainer.max_steps", str(max_steps), "--trainer.log_every_n_steps", "1",
            "--trainer.limit_val_batches", "0", "--trainer.val_check_interval", "1000",
            "--trainer.logger", "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.save_dir", str(root),
            "--checkpoint.dirpath", str(root / "checkpoints"), "--checkpoint.filename", "{step}",
            "--checkpoint.every_n_train_steps", "0", "--baseline.enabled", "false",
            "--model.init_args.optim.scheduler", "constant", "--model.init_args.optim.warmup_steps", "0",
            "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto")]
    if ckpt is not None:
        args += ["--ckpt_path", str(ckpt)]
    return run_cli_subprocess(args, timeout=300, check=check, env={"OMP_NUM_THREADS": "1"})


def test_a_two_rank_run_resumes_exactly_and_refuses_one_rank(tiny_model, tmp_path):
    model_dir = tiny_model("llama")
    run(model_dir, tmp_path / "full", 2, TOTAL)
    run(model_dir, tmp_path / "first", 2, FIRST)
    ckpt = tmp_path / "first" / "checkpoints" / f"step={FIRST}.ckpt"
    run(model_dir, tmp_path / "resumed", 2, TOTAL, ckpt)

    full, resumed = metrics_dir(tmp_path / "full"), metrics_dir(tmp_path / "resumed")
    reference, after = read_losses(full), read_losses(resumed)
    assert sorted(reference) == list(range(1, TOTAL + 1)) and sorted(after) == list(range(FIRST + 1, TOTAL + 1))
    for step in after:
        assert after[step] == pytest.approx(reference[step], rel=1e-6), (step, after, reference)
    expected, got = adapter_tensors(full / "adapter"), adapter_tensors(resumed / "adapter")
    assert set(got) == set(expected) and expected
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=0, atol=1e-6, msg=name)

    refused = run(model_dir, tmp_path / "one-rank", 1, TOTAL, ckpt, check=False)
    assert refused.returncode != 0
    assert "written by 2 data-parallel ranks, this run has 1" in output(refused)
    assert "Traceback" not in output(refused)


def test_a_one_rank_checkpoint_at_an_epochs_end_continues_on_two_ranks(tiny_model, tmp_path):
    """A requeued job may come back on more GPUs: from the end of epoch 0 (step 5) on one rank × 4 rows, two ranks
    × 2 rows train epoch 1 as if they had run from the start (length grouping forms the same 4-row steps)."""
    model_dir = tiny_model("llama")
    run(model_dir, tmp_path / "full", 2, TOTAL)
    run(model_dir, tmp_path / "first", 1, 5)
    run(model_dir, tmp_path / "resumed", 2, TOTAL, tmp_path / "first" / "checkpoints" / "step=5.ckpt")

    full, resumed = metrics_dir(tmp_path / "full"), metrics_dir(tmp_path / "resumed")
    reference, after = read_losses(full), read_losses(resumed)
    assert sorted(after) == [6, 7], after
    for step in after:
        assert after[step] == pytest.approx(reference[step], rel=1e-5), (step, after, reference)
    expected, got = adapter_tensors(full / "adapter"), adapter_tensors(resumed / "adapter")
    assert set(got) == set(expected) and expected
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
