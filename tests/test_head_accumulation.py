"""The classifier heads and the label-word head train the same run however an optimizer step is split.

Batch 8 × accumulation 1, 4 × 2 and 2 × 4 on 14 NLI rows (steps of 8 and 6 rows: the 6-row step is split
4 + 2 and 2 + 2 + 2, micro-batches of unequal sizes) log the same ``train_loss`` per step and end with the same
adapter and head weights, in float64 with dropout off: a classifier's loss is normalised over the rows of the
whole step, the label-word head's over its label tokens (``lit_lora.token_loss``). A per-micro-batch mean
weights the 2-row micro-batch as the 4-row one and moves both far beyond the tolerance.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import QUIET, adapter_tensors, build_cli, config, fit, read_losses, without_dropout

ROWS, STEPS = 14, 4  # two epochs of a full step (8 rows) and a ragged one (6 rows)
HEADS = {  # config, tiny architecture, extra arguments
    "roberta-classifier": ("tutorials/nli_roberta_lora", "roberta", ()),
    "llama-last-token-classifier": ("tutorials/nli_roberta_lora", "llama",
                                    ("--model.init_args.adapter.init_args.target_modules", "[q_proj,v_proj]")),
    "llama-label-word": ("tutorials/nli_llama_label_word", "llama", ("--data.init_args.group_by_length", "false")),
    # length grouping (on by default for prompt data) forms whole optimizer steps: the same rows per step
    "llama-label-word-grouped": ("tutorials/nli_llama_label_word", "llama", ("--data.init_args.group_by_length", "true")),
}


def run(config_name: str, model_dir: str, root: Path, batch_size: int, accumulate: int, *extra: str):
    """Fit ``STEPS`` optimizer steps; the logged loss per step and the saved adapter (head included)."""
    cli = build_cli(["--config", config(config_name), "--model.init_args.model_name_or_path", model_dir,
                     "--trainer.default_root_dir", str(root), *QUIET, "--trainer.precision", "64-true",
                     "--data.init_args.batch_size", str(batch_size), "--trainer.accumulate_grad_batches",
                     str(accumulate), "--data.init_args.max_samples", str(ROWS), "--trainer.max_steps", str(STEPS),
                     "--trainer.limit_val_batches", "0", "--trainer.val_check_interval", "1000",
                     "--trainer.log_every_n_steps", "1", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                     "--trainer.logger.save_dir", str(root), "--checkpoint.save_last", "false", *extra], run=False)
    fit(cli)
    assert len(cli.datamodule.datasets["train"]) == ROWS
    run_dir = Path(cli.trainer.log_dir)
    return read_losses(run_dir), adapter_tensors(run_dir / "adapter")


@pytest.mark.parametrize("head", sorted(HEADS))
def test_accumulated_micro_batches_train_the_same_steps(head, tiny_model, tmp_path):
    config_name, arch, extra = HEADS[head]
    model_dir = without_dropout(tiny_model(arch), tmp_path / "model")
    losses, weights = run(config_name, model_dir, tmp_path / "8x1", 8, 1, *extra)
    assert sorted(losses) == list(range(1, STEPS + 1)) and weights
    assert any(".score." in k or ".classifier." in k for k in weights) or head.startswith("llama-label-word")
    for batch_size, accumulate in ((4, 2), (2, 4)):
        got_losses, got = run(config_name, model_dir, tmp_path / f"{batch_size}x{accumulate}", batch_size, accumulate,
                              *extra)
        for step, loss in losses.items():  # logged in float32
            assert got_losses[step] == pytest.approx(loss, rel=1e-6), (batch_size, accumulate, step)
        assert set(got) == set(weights)
        for name, tensor in weights.items():
            torch.testing.assert_close(got[name], tensor, rtol=1e-10, atol=1e-12,
                                       msg=lambda detail, n=name: f"{batch_size} x {accumulate}: {n}\n{detail}")
