"""The first optimizer step's gradient norm, as the strategy's own clipping sees it, is the same for 4 rows on one
rank in one micro-batch as for 2 ranks x 2 micro-batches of 1 row (``accumulate_grad_batches`` 2) under ZeRO-3 and
FSDP: the loss is normalised by the label tokens of the whole step across micro-batches and ranks, and the scale
lit-lora gives the loss undoes Lightning's division by the accumulation, DeepSpeed's second one (``scale_wrt_gas``)
and the ranks' averaging. A factor off anywhere changes the norm (and what ``gradient_clip_val`` clips) by 2x or 4x.

``tests/test_token_normalised_loss.py`` compares gradients under DDP, ``tests/test_deepspeed_strategy.py`` ZeRO-2
with and without accumulation on 2 ranks both times; losses compared after Adam steps cannot show a wrong scale.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from harness import CONFIGS, DEMO, REPO, deepspeed_on_cpu_env, run_cli_subprocess, write_code_rows
from lightning.pytorch import Callback


class FirstStepNorm(Callback):
    """The global gradient norm of optimizer step 1 to ``$GRAD_NORM`` (rank 0): the engine's under DeepSpeed, the
    root unit's ``clip_grad_norm_`` under FSDP (every rank, a collective), the plain norm elsewhere."""

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        from lit_lora.cluster.fsdp_units import fsdp_root

        if trainer.global_step != 0 or hasattr(trainer.strategy, "deepspeed_engine"):
            return
        root = fsdp_root(pl_module)
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        norm = root.clip_grad_norm_(float("inf")) if root is not None else \
            torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        self.save(trainer, norm)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        engine = getattr(trainer.strategy, "deepspeed_engine", None)
        if engine is not None and trainer.global_step == 1:
            self.save(trainer, engine.get_global_grad_norm())

    @staticmethod
    def save(trainer, norm) -> None:
        path = os.environ["GRAD_NORM"]
        if trainer.is_global_zero and not os.path.exists(path):
            torch.save(float(norm), path)


def first_step_norm(model_dir: str, data: Path, root: Path, strategy: str, ranks: int, env: dict) -> float:
    batch, accumulate = (4, 1) if ranks == 1 else (1, 2)
    args = ["fit", "--config", DEMO, "--config", str(CONFIGS / "strategies" / strategy),
            "--model.init_args.model_name_or_path", model_dir,
            "--data.init_args.source", str(data), "--data.init_args.validation_source", str(data),
            "--data.init_args.batch_size", str(batch), "--data.init_args.max_length", "256",
            "--trainer.accumulate_grad_batches", str(accumulate), "--trainer.devices", str(ranks),
            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.precision", "32-true",
            "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(root),
            "--baseline.enabled", "false", "--trainer.callbacks+=test_ranks_gradients.FirstStepNorm"]
    out = root.parent / f"{root.name}.pt"
    run_cli_subprocess(args, via="cpu_as_cuda", cwd=root.parent, timeout=400,
                       env={**env, "GRAD_NORM": str(out), "PYTHONPATH": str(REPO / "tests")})
    return float(torch.load(out))


@pytest.mark.parametrize("strategy", ["deepspeed_zero3.yaml", "fsdp.yaml"])
def test_two_ranks_accumulating_have_one_ranks_gradient(strategy, tiny_model, torch_extensions_dir, tmp_path):
    model_dir, env = tiny_model("llama"), deepspeed_on_cpu_env(torch_extensions_dir)
    data = write_code_rows(tmp_path / "rows.jsonl", 4)  # rows of very different lengths
    one = first_step_norm(model_dir, data, tmp_path / "one", "ddp.yaml", 1, env)
    two = first_step_norm(model_dir, data, tmp_path / "two", strategy, 2, env)
    assert one > 0 and two == pytest.approx(one, rel=1e-4), (one, two)
