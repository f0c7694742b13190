"""DeepSpeed ZeRO-2 / ZeRO-3 × LoRA / QLoRA: a few steps of ``lit-lora fit`` on one GPU (marker ``gpu``).

Each case runs the CLI in a subprocess (DeepSpeed sets up a process group and patches module
construction for ZeRO-3; a fresh process keeps the cases independent)::

    lit-lora fit --config configs/demo.yaml --config configs/strategies/deepspeed_zero3.yaml \
        --model.init_args.model_name_or_path <tiny llama> --trainer.max_steps 4 ...

and checks that the loss is finite and goes down on a repeated batch, and that the adapter written
at the end (``<run dir>/adapter/adapter_model.safetensors``) is complete: every LoRA tensor of an
unsharded adapter of the same configuration is there, none is empty (an ungathered ZeRO-3 shard
would be), the shapes match, and plain ``peft.PeftModel.from_pretrained`` loads it.
The argument lists themselves are checked on any machine by ``--print_config``.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
STEPS = 4
CASES = {  # id -> (strategy fragment, ZeRO stage, adapter arguments)
    "zero2-lora": ("deepspeed_zero2.yaml", 2, ["--model.init_args.adapter", "lit_lora.adapters.LoRA"]),
    "zero3-lora": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.LoRA"]),
    "zero2-qlora": ("deepspeed_zero2.yaml", 2, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                "--model.init_args.adapter.init_args.quant_storage", "bfloat16",
                                                "--model.init_args.adapter.init_args.compute_dtype", "bfloat16",
                                                "--model.init_args.dtype", "bfloat16"]),
    "zero3-qlora": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                "--model.init_args.adapter.init_args.quant_storage", "bfloat16",
                                                "--model.init_args.adapter.init_args.compute_dtype", "bfloat16",
                                                "--model.init_args.dtype", "bfloat16"]),
    # accepted by lit_lora.compatibility on the evidence of tests/test_zero_cpu.py (ZeRO-3 on CPU); checked here on CUDA
    "zero3-qlora-uint8-storage": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                              "--model.init_args.dtype", "float32"]),
    "zero3-qlora8": ("deepspeed_zero3.yaml", 3, ["--model.init_args.adapter", "lit_lora.adapters.QLoRA",
                                                 "--model.init_args.adapter.init_args.bits", "8",
                                                 "--model.init_args.dtype", "bfloat16"]),
}
LORA = ["--model.init_args.adapter.init_args.r", "8", "--model.init_args.adapter.init_args.alpha", "16",
        "--model.init_args.adapter.init_args.dropout", "0.0",
        "--model.init_args.adapter.init_args.target_modules", "all-linear"]


def fit_args(case: str, model_dir: str, root: Path) -> list[str]:
    """``lit-lora fit`` arguments: one batch of 8 rows repeated for ``STEPS`` steps, a flat learning rate."""
    strategy, _, adapter = CASES[case]
    return [
        "fit", "--config", str(REPO / "configs/demo.yaml"), "--config", str(REPO / "configs/strategies" / strategy),
        "--model.init_args.model_name_or_path", model_dir, *adapter, *LORA,
        "--model.init_args.optim.lr", "1e-2", "--model.init_args.optim.warmup_steps", "0",
        "--model.init_args.optim.scheduler", "constant",
        "--data.init_args.max_samples", "10", "--data.init_args.val_fraction", "0.2",
        "--data.init_args.batch_size", "8", "--data.init_args.max_length", "256",
        "--trainer.devices", "1", "--trainer.max_steps", str(STEPS), "--trainer.log_every_n_steps", "1",
        "--trainer.val_check_interval", "null", "--trainer.check_val_every_n_epoch", "1",
        "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(root), "--baseline.enabled", "false",
    ]


def lit_lora(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "lit_lora.cli", *args], cwd=cwd, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, f"lit-lora {' '.join(args[:1])} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.mark.parametrize("case", sorted(CASES))
def test_fit_arguments_parse_into_the_intended_strategy(case, tiny_model, tmp_path, capsys):
    """CPU: the GPU cases' arguments are valid CLI input and select the ZeRO stage and 4-bit storage meant."""
    from lit_lora.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*fit_args(case, tiny_model("llama"), tmp_path), "--print_config"])
    assert exit_.value.code in (0, None)
    printed = capsys.readouterr().out
    config = yaml.safe_load(printed[printed.index("# lightning.pytorch"):])
    _, stage, adapter_args = CASES[case]
    assert config["trainer"]["strategy"]["init_args"]["stage"] == stage
    assert config["trainer"]["accelerator"] == "gpu" and config["trainer"]["max_steps"] == STEPS
    adapter = config["model"]["init_args"]["adapter"]
    if "qlora" in case:
        given = dict(zip(adapter_args[::2], adapter_args[1::2]))
        assert adapter["class_path"].endswith("QLoRA")
        assert adapter["init_args"]["quant_storage"] == given.get("--model.init_args.adapter.init_args.quant_storage")
        assert adapter["init_args"]["bits"] == int(given.get("--model.init_args.adapter.init_args.bits", 4))
    else:
        assert adapter["class_path"].endswith(".LoRA")


def reference_adapter(model_dir: str, out: Path) -> dict[str, torch.Tensor]:
    """An unsharded, untrained LoRA adapter of the same r / targets, written on the CPU by peft."""
    from lit_lora.adapters import LoRA
    from lit_lora.models import CausalLMModule

    module = CausalLMModule(model_dir, adapter=LoRA(r=8, alpha=16, dropout=0.0, target_modules="all-linear"))
    module.configure_model()
    module.save_pretrained(out)
    return load_file(out / "adapter_model.safetensors")


def train_losses(run_dir: Path) -> list[float]:
    return [loss for _, loss in sorted(losses_by_step(run_dir).items())]


@pytest.mark.gpu
@pytest.mark.parametrize("case", sorted(CASES))
def test_deepspeed_fit_saves_a_complete_adapter(case, tiny_model, tmp_path):
    from peft import PeftModel, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model("llama")
    root = tmp_path / "run"
    lit_lora(*fit_args(case, model_dir, root), cwd=tmp_path)

    run_dir = next(root.rglob("metrics.csv")).parent
    losses = train_losses(run_dir)
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses), losses
    assert losses[-1] < losses[0], losses  # the same 8 rows every step: training must lower the loss

    saved = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    expected = reference_adapter(model_dir, tmp_path / "reference")
    assert set(saved) == set(expected), sorted(set(saved) ^ set(expected))[:5]
    for name, tensor in expected.items():
        assert saved[name].numel() > 0, f"{name} is empty (an ungathered ZeRO-3 shard?)"
        assert saved[name].shape == tensor.shape, (name, saved[name].shape, tensor.shape)
    assert any(n.endswith("lora_B.weight") and saved[n].abs().sum() > 0 for n in saved)  # B starts at zero

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    loaded = get_peft_model_state_dict(model)
    for name, tensor in saved.items():
        torch.testing.assert_close(loaded[name].float(), tensor.float(), msg=name)


def losses_by_step(run_dir: Path) -> dict[int, float]:
    """Optimizer steps done (1-based) -> train_loss, from the CSVLogger's metrics.csv."""
    with open(run_dir / "metrics.csv") as f:
        return {int(r["step"]) + 1: float(r["train_loss"]) for r in csv.DictReader(f) if r.get("train_loss")}


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["zero2-qlora", "zero3-lora"])
def test_deepspeed_checkpoint_resumes_to_the_losses_of_the_whole_run(case, tiny_model, tmp_path):
    """A run resumed (``--ckpt_path``) from its step-2 DeepSpeed checkpoint repeats steps 3-4 exactly.

    The checkpoint holds no frozen weights (``exclude_frozen_parameters``) and DeepSpeed hands Lightning
    a client state without ``state_dict``: lit-lora's resume check must accept it.
    """
    model_dir = tiny_model("llama")
    every = ["--checkpoint.dirpath", str(tmp_path / "checkpoints"), "--checkpoint.filename", "{step}",
             "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1"]
    lit_lora(*fit_args(case, model_dir, tmp_path / "whole"), *every, cwd=tmp_path)
    whole = losses_by_step(next((tmp_path / "whole").rglob("metrics.csv")).parent)
    checkpoint = tmp_path / "checkpoints" / "step=2.ckpt"
    assert (checkpoint / "latest").is_file() and not list(tmp_path.glob("checkpoints/.partial-*"))

    lit_lora(*fit_args(case, model_dir, tmp_path / "resumed"), "--ckpt_path", str(checkpoint), cwd=tmp_path)
    resumed = losses_by_step(next((tmp_path / "resumed").rglob("metrics.csv")).parent)
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(whole[step], rel=1e-3), (step, resumed, whole)
