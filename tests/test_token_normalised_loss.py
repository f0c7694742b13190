"""One optimizer step's gradient does not depend on how its rows are split: one batch of 8, four
micro-batches of 2 (accumulation) or two ranks of 4 (DDP, gloo) give the same gradient and the same
logged ``train_loss``, because the loss is summed over label tokens and divided by the label tokens of
the whole step (``lit_lora.token_loss``). Rows of very different lengths make a per-micro-batch
mean differ from that by far more than the tolerance."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from harness import DEMO, WORKERS, run_cli_subprocess, write_code_rows

ROWS = 8
pytestmark = pytest.mark.faults


def first_step(model_dir: str, data: Path, out: Path, batch_size: int, accumulate: int, devices: int):
    """Run ``lit-lora fit`` for one optimizer step; return its gradients and logged train_loss."""
    args = ["fit", "--config", DEMO,
            "--model.init_args.model_name_or_path", model_dir,
            "--data.init_args.source", str(data), "--data.init_args.validation_source", str(data),
            "--data.init_args.batch_size", str(batch_size), "--data.init_args.max_length", "512",
            "--trainer.accumulate_grad_batches", str(accumulate), "--trainer.devices", str(devices),
            "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.precision", "64-true",  # float64: summation order cannot move a gradient by 1e-9
            "--trainer.default_root_dir", str(out.parent / out.stem), "--baseline.enabled", "false",
            "--trainer.callbacks+=grad_dump.FirstStepGradients"]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    result = run_cli_subprocess(args, env={"GRAD_DUMP": str(out), "PYTHONPATH": str(WORKERS)}, timeout=300,
                                check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return torch.load(out), torch.load(str(out) + ".loss")


def test_one_step_is_the_same_however_its_rows_are_split(tiny_model, tmp_path):
    data = write_code_rows(tmp_path / "rows.jsonl", ROWS)
    model = tiny_model("llama")
    whole, whole_loss = first_step(model, data, tmp_path / "whole.pt", batch_size=ROWS, accumulate=1, devices=1)
    accumulated, acc_loss = first_step(model, data, tmp_path / "acc.pt", batch_size=2, accumulate=4, devices=1)
    ranks, ranks_loss = first_step(model, data, tmp_path / "ddp.pt", batch_size=4, accumulate=1, devices=2)
    assert set(whole) == set(accumulated) == set(ranks) and whole
    assert any(g.abs().max() > 1e-3 for g in whole.values())  # a real gradient, not zeros
    for name, grad in whole.items():  # the message keeps torch's own (largest difference and where)
        torch.testing.assert_close(accumulated[name], grad, rtol=0, atol=1e-9,
                                   msg=lambda detail, name=name: f"accumulation: {name}\n{detail}")
        torch.testing.assert_close(ranks[name], grad, rtol=0, atol=1e-9,
                                   msg=lambda detail, name=name: f"2 ranks: {name}\n{detail}")
    assert acc_loss == pytest.approx(whole_loss, rel=1e-5) and ranks_loss == pytest.approx(whole_loss, rel=1e-5)


def test_the_returned_loss_is_this_ranks_share_though_the_all_reduce_sums_in_place(tiny_model, monkeypatch):
    """``training_step`` returns this rank's summed token loss × world ÷ the step's label tokens on every rank,
    and logs the step's mean. DDP's all-reduce sums in place; in float32 ``.float()`` is no copy, so a reduce of
    the logged sum's storage would turn the returned loss (what callbacks, ``FiniteGuard`` and backward see) into
    every rank's sum. Two ranks here: the other one's loss sum and label count are added in place, as gloo does."""
    from types import SimpleNamespace

    from lit_lora.models import CausalLMModule

    module = CausalLMModule(tiny_model("llama"))
    module.configure_model()
    torch.manual_seed(0)
    ids = torch.randint(3, 500, (2, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}
    summed, count = (t.detach() for t in module.loss_terms(batch))
    assert summed.dtype == torch.float32
    other_rank = iter([count.float() + 5, 2 * summed])  # its label tokens, then its loss sum: the reduce order

    def all_reduce(tensor, reduce_op):
        assert reduce_op == "sum"
        return tensor.add_(next(other_rank))

    logged = {}
    monkeypatch.setattr(module, "log", lambda name, value, **_: logged.update({name: float(value)}))
    strategy = SimpleNamespace(reduce=all_reduce, handles_gradient_accumulation=False)
    module._trainer = SimpleNamespace(strategy=strategy, world_size=2, accumulate_grad_batches=1)
    module.on_train_epoch_start()
    returned = module.training_step(batch, 0)
    step_tokens = float(count) * 2 + 5
    assert float(returned) == pytest.approx(float(summed) * 2 / step_tokens, rel=1e-6)
    assert logged["train_loss"] == pytest.approx(3 * float(summed) / step_tokens, rel=1e-6)
