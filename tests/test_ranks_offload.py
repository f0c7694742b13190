"""``configs/strategies/deepspeed_zero3_offload.yaml`` trains: with the optimizer offloaded DeepSpeed's engine
refuses any optimizer but its own CPU Adam (``ZeRORuntimeException`` before the first step), so ``optim.name:
adamw`` is built as ``DeepSpeedCPUAdam`` there (``lit_lora.optim.offloads_optimizer``), with the same decay and
no-decay groups and the same warmup / cosine schedule: its losses are DDP's, step by step, on 2 CPU ranks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import CONFIGS, DEMO, deepspeed_on_cpu_env, metrics_dir, read_losses, run_cli_subprocess

STEPS = 4


def args(model_dir: str, root: Path, strategy: str) -> list[str]:
    return ["fit", "--config", DEMO, "--config", str(CONFIGS / "strategies" / strategy),
            "--model.init_args.model_name_or_path", model_dir,
            "--model.init_args.optim.lr", "1e-2", "--model.init_args.optim.weight_decay", "0.1",
            "--model.init_args.optim.warmup_steps", "2", "--model.init_args.optim.scheduler", "cosine",
            "--data.init_args.max_samples", "20", "--data.init_args.val_fraction", "0.2",
            "--data.init_args.batch_size", "2", "--data.init_args.max_length", "128",
            "--trainer.devices", "2", "--trainer.max_steps", str(STEPS), "--trainer.precision", "32-true",
            "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
            "--baseline.enabled", "false"]


def test_the_offload_fragment_trains_with_ddps_losses(tiny_model, torch_extensions_dir, tmp_path):
    model_dir, losses = tiny_model("llama"), {}
    for strategy in ("ddp.yaml", "deepspeed_zero3_offload.yaml"):
        root = tmp_path / strategy
        result = run_cli_subprocess(args(model_dir, root, strategy), via="cpu_as_cuda", cwd=tmp_path,
                                    env=deepspeed_on_cpu_env(torch_extensions_dir), timeout=400, check=False)
        assert result.returncode == 0, (strategy, result.stderr[-3000:])
        losses[strategy] = read_losses(metrics_dir(root))
    reference, offloaded = losses["ddp.yaml"], losses["deepspeed_zero3_offload.yaml"]
    assert sorted(reference) == sorted(offloaded) == list(range(1, STEPS + 1)), losses
    assert reference[STEPS] < reference[1]  # the steps train
    for step, loss in reference.items():
        assert offloaded[step] == pytest.approx(loss, rel=1e-4), (step, losses)


def test_only_an_offloaded_optimizer_that_deepspeed_forces_is_replaced():
    """The fragment's ``offload_optimizer``, or a DeepSpeed config offloading it, asks for DeepSpeed's CPU Adam;
    parameters offloaded alone, no offload, another strategy, or ``zero_force_ds_cpu_optimizer: false`` keep
    torch's AdamW."""
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DeepSpeedStrategy, DDPStrategy

    from lit_lora.optim import offloads_optimizer

    def offloads(strategy) -> bool:
        return offloads_optimizer(SimpleNamespace(strategy=strategy))

    zero2_offload = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu"}}}
    assert offloads(DeepSpeedStrategy(stage=3, offload_optimizer=True, offload_parameters=True))
    assert offloads(DeepSpeedStrategy(config=zero2_offload))
    assert not offloads(DeepSpeedStrategy(config={**zero2_offload, "zero_force_ds_cpu_optimizer": False}))
    assert not offloads(DeepSpeedStrategy(stage=3, offload_parameters=True))
    assert not offloads(DeepSpeedStrategy(stage=2)) and not offloads(DDPStrategy()) and not offloads_optimizer(None)
