"""``lit-lora estimate`` follows the precision and strategy ``fit`` runs with, not one unsharded device.

* ``*-true`` precisions: Lightning's ``convert_module`` casts the whole module (peft's float32 LoRA weights too)
  before the first step, so weights, gradients and AdamW's moments are 16-bit; checked against the bytes of the
  model ``configure_model`` builds, converted as the Trainer converts it, and its optimizer after one step.
* DeepSpeed ZeRO and FSDP split weights / gradients / optimizer state over ``devices x num_nodes`` (and DeepSpeed
  in 16-bit adds a float32 master copy); the shipped strategy fragments change the estimate accordingly.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from lit_lora.memory import tensor_bytes

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO = CONFIGS / "demo.yaml"
FULL = CONFIGS / "nli" / "roberta_large_full_multinli.yaml"
STRATEGIES = CONFIGS / "strategies"


def estimate_of(config: Path, *overrides: str):
    from lit_lora.commands.experiment import model_of, parse_experiment
    from lit_lora.estimate import build, memory_estimate

    cfg = parse_experiment(["--config", str(config), *overrides])
    module = model_of(cfg)
    built = build(module)
    estimate, assumptions = memory_estimate(built, module, cfg, 2, 64, 64, 1.0)
    return estimate, assumptions, built, module


def test_bf16_true_counts_what_the_converted_model_and_its_optimizer_hold():
    from lightning.pytorch.plugins.precision import HalfPrecision

    from lit_lora.commands.experiment import model_of, parse_experiment

    estimate, _, _, _ = estimate_of(DEMO, "--trainer.precision", "bf16-true")
    real = model_of(parse_experiment(["--config", str(DEMO), "--trainer.precision", "bf16-true"]))
    real.configure_model()
    model = HalfPrecision("bf16-true").convert_module(real.model)  # what Strategy.setup does before fit
    weights = sum(tensor_bytes(t) for t in [*{id(p): p for p in model.parameters()}.values(), *model.buffers()])
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    sum(p.float().sum() for p in trainable).backward()
    optimizer.step()
    state = sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values() if v.numel() > 1)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert estimate.weights == weights
    assert estimate.gradients == sum(tensor_bytes(p.grad) for p in trainable)
    assert estimate.optimizer == state


def test_zero3_splits_weights_gradients_and_optimizer_over_the_devices():
    """Full fine-tuning of RoBERTa-large under the shipped ZeRO-3 fragment on 2 nodes x 4 GPUs: DeepSpeed casts
    the parameters to bf16 and keeps float32 master weights and moments, all split 8 ways (the classifier base
    is loaded whole on each GPU first: the load peak)."""
    from lit_lora.estimate import weight_bytes

    single, _, built, _ = estimate_of(FULL)
    zero3, said, sharded, _ = estimate_of(FULL, "--config", str(STRATEGIES / "deepspeed_zero3.yaml"),
                                          "--trainer.devices", "4", "--trainer.num_nodes", "2")
    n = sum(p.numel() for p in built.model.parameters() if p.requires_grad)
    assert said["sharding"].name == "DeepSpeed ZeRO-3" and said["sharding"].world == 8
    assert single.optimizer == 8 * n and single.gradients == 4 * n  # float32, one device
    assert {p.dtype for p in sharded.model.parameters()} == {torch.bfloat16}
    assert zero3.gradients == math.ceil(2 * n / 8)
    assert zero3.optimizer == math.ceil(12 * n / 8)  # float32 master + two float32 moments, split 8 ways
    assert zero3.weights < single.weights / 4
    assert zero3.load_peak == weight_bytes(sharded.model) + 2**30  # the whole bf16 base + the 1 GiB overhead
    peak = max(zero3.total, zero3.load_peak)
    assert zero3.fits(peak) and not zero3.fits(peak - 1)


@pytest.mark.parametrize("fragment,weights_split,gradients_split", [
    ("deepspeed_zero2.yaml", False, True), ("fsdp.yaml", True, True), ("ddp.yaml", False, False)])
def test_each_shipped_strategy_changes_what_one_device_holds(fragment, weights_split, gradients_split):
    single, _, _, _ = estimate_of(FULL, "--trainer.precision", "bf16-true")
    sharded, said, _, _ = estimate_of(FULL, "--config", str(STRATEGIES / fragment), "--trainer.devices", "4",
                                      "--trainer.precision", "bf16-true")
    assert (sharded.weights < single.weights / 2) == weights_split
    assert (sharded.gradients < single.gradients / 2) == gradients_split
    if fragment == "ddp.yaml":  # DDP's gradient buckets: a second copy of the gradients
        assert sharded.gradients == 2 * single.gradients and sharded.optimizer == single.optimizer


def test_the_report_says_what_is_sharded_and_offloaded(capsys):
    from lit_lora.commands import main

    main(["estimate", "--config", str(FULL), "--config", str(STRATEGIES / "deepspeed_zero3_offload.yaml"),
          "--trainer.devices", "4"])
    out = capsys.readouterr().out
    assert "GPU memory estimate (one device of 4, DeepSpeed ZeRO-3):" in out
    assert "optimizer state        0.00 GiB" in out and "(offloaded to CPU memory)" in out
    assert "the largest layer gathered whole" in out


def test_a_combination_fit_refuses_is_refused_with_fits_message():
    """4-bit QLoRA under FSDP without a matching ``quant_storage``: ``fit`` stops at the config, so an estimate
    that says "fits" would let ``estimate … && sbatch …`` queue a job that cannot start."""
    from lit_lora.commands import main
    from lit_lora.errors import IncompatibleConfig

    gemma = CONFIGS / "code" / "gemma2b_qlora_python_codes.yaml"
    with pytest.raises(IncompatibleConfig, match="quant_storage"):
        main(["estimate", "--config", str(gemma), "--config", str(STRATEGIES / "fsdp.yaml")])


@pytest.mark.parametrize("option,value", [("--batch_size", "-4"), ("--seq_len", "0"), ("--gpu_memory_gib", "-1")])
def test_an_option_out_of_range_is_a_parser_error_naming_it(capsys, option, value):
    """``--batch_size -4`` printed negative activations and "fits: yes"; ``--seq_len 0`` silently became the
    data's max length."""
    from lit_lora.commands import main

    with pytest.raises(SystemExit) as stop:
        main(["estimate", "--config", str(DEMO), option, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f'Parser key "{option[2:]}"' in err and "v>0" in err
