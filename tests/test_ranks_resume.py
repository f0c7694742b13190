"""Exact resume on 2 CPU ranks with everything a resume can lose switched on: LoRA dropout 0.1 (per-rank masks,
``StepSeed``), a warmup + cosine schedule, weight decay with its no-decay group, ``accumulate_grad_batches`` 2, a
checkpoint at step 2 (micro-batch 4 of an epoch of 5 per rank) and a resume that crosses into the next epoch (each
rank's sampler position; under DeepSpeed the epoch's last window padded with an unlabelled micro-batch).
Under DDP and under DeepSpeed ZeRO-2 the resumed run logs the uninterrupted run's losses, step by step.

``tests/test_ddp_resume.py`` and ``tests/test_deepspeed_strategy.py`` resume with dropout 0, a constant rate, no
accumulation and (DeepSpeed) one global batch repeated every step: none of the above could fail there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import CONFIGS, DEMO, deepspeed_on_cpu_env, metrics_dir, read_losses, run_cli_subprocess

STEPS = 5  # 20 rows (all kept at max_length 512), 2 ranks x batch 2: 5 micro-batches a rank and epoch, 3 steps
# (windows of 2, 2 and 1)


def args(model_dir: str, root: Path, strategy: str) -> list[str]:
    return ["fit", "--config", DEMO, "--config", str(CONFIGS / "strategies" / strategy),
            "--model.init_args.model_name_or_path", model_dir,
            "--model.init_args.adapter.init_args.dropout", "0.1", "--model.init_args.optim.lr", "1e-2",
            "--model.init_args.optim.weight_decay", "0.1", "--model.init_args.optim.warmup_steps", "2",
            "--model.init_args.optim.scheduler", "cosine",
            "--data.init_args.max_samples", "25", "--data.init_args.val_fraction", "0.2",
            "--data.init_args.batch_size", "2", "--data.init_args.max_length", "512",
            "--trainer.devices", "2", "--trainer.max_steps", str(STEPS), "--trainer.precision", "32-true",
            "--trainer.accumulate_grad_batches", "2", "--trainer.limit_val_batches", "0",
            "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
            "--checkpoint.dirpath", str(root.parent / "checkpoints"), "--checkpoint.filename", "{step}",
            "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1",
            "--baseline.enabled", "false"]


@pytest.mark.parametrize("strategy", ["ddp.yaml", "deepspeed_zero2.yaml"])
def test_a_resume_with_dropout_decay_and_accumulation_repeats_the_whole_runs_losses(strategy, tiny_model, torch_extensions_dir,
                                                                    tmp_path):
    model_dir, env = tiny_model("llama"), deepspeed_on_cpu_env(torch_extensions_dir)
    run_cli_subprocess(args(model_dir, tmp_path / "whole", strategy), via="cpu_as_cuda", cwd=tmp_path, env=env,
                       timeout=400)
    whole = read_losses(metrics_dir(tmp_path / "whole"))
    assert sorted(whole) == list(range(1, STEPS + 1)) and len({round(v, 5) for v in whole.values()}) == STEPS
    checkpoint = tmp_path / "checkpoints" / "step=2.ckpt"
    assert checkpoint.exists(), sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    if checkpoint.is_file():  # DDP's (DeepSpeed's is a directory): inside the first epoch, after micro-batch 4 of 5
        loops = torch.load(checkpoint, weights_only=False, map_location="cpu")["loops"]["fit_loop"]
        assert loops["epoch_loop.batch_progress"]["current"]["ready"] == 4 and loops["epoch_progress"]["current"][
            "completed"] == 0

    run_cli_subprocess([*args(model_dir, tmp_path / "resumed", strategy), "--checkpoint.dirpath",
                        str(tmp_path / "resumed-checkpoints"), "--ckpt_path", str(checkpoint)],
                       via="cpu_as_cuda", cwd=tmp_path, env=env, timeout=400)
    resumed = read_losses(metrics_dir(tmp_path / "resumed"))
    assert sorted(resumed) == list(range(3, STEPS + 1)), resumed
    for step, loss in resumed.items():
        assert loss == pytest.approx(whole[step], rel=1e-6), (step, resumed, whole)


def test_a_checkpoint_written_inside_a_window_on_two_ranks_resumes_exactly(tiny_model, tmp_path):
    """``val_check_interval`` counts micro-batches: validating after each rank's third micro-batch with steps of 2
    saves inside step 2's window (``step=1.ckpt``, after micro-batch 3 of 5). Each rank's loader position moves back to the window's start
    (``cluster/step_aligned.py``), so every later step is the uninterrupted run's, on both ranks' data."""
    model_dir = tiny_model("llama")
    validating = ["--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
                  "--checkpoint.every_n_train_steps", "0", "--checkpoint.every_n_epochs", "1"]
    run_cli_subprocess([*args(model_dir, tmp_path / "whole", "ddp.yaml"), *validating], via="cpu_as_cuda",
                       cwd=tmp_path, timeout=400)
    whole = read_losses(metrics_dir(tmp_path / "whole"))
    checkpoint = tmp_path / "checkpoints" / "step=1.ckpt"
    assert sorted(whole) == list(range(1, STEPS + 1)) and checkpoint.exists(), sorted(
        p.name for p in (tmp_path / "checkpoints").iterdir())
    saved = torch.load(checkpoint, weights_only=False, map_location="cpu")["loops"]["fit_loop"]
    assert saved["epoch_loop.batch_progress"]["current"]["ready"] == 2  # saved after micro-batch 3: window start
    run_cli_subprocess([*args(model_dir, tmp_path / "resumed", "ddp.yaml"), *validating, "--checkpoint.dirpath",
                        str(tmp_path / "resumed-checkpoints"), "--ckpt_path", str(checkpoint)],
                       via="cpu_as_cuda", cwd=tmp_path, timeout=400)
    resumed = read_losses(metrics_dir(tmp_path / "resumed"))
    assert sorted(resumed) == list(range(2, STEPS + 1)), resumed
    for step, loss in resumed.items():
        assert loss == pytest.approx(whole[step], rel=1e-6), (step, resumed, whole)
