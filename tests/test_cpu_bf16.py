"""A float32 CPU fit on a CPU with native bfloat16 says how to use it; ``--trainer.precision bf16-mixed`` trains
on a CPU with float32 adapter weights (autocast computes in bfloat16, the weights and optimizer stay float32)."""

from __future__ import annotations

import logging

import torch
from harness import adapter_tensors, build_cli, demo_args, read_losses, version_dir

from lit_lora import cpu_bf16

SAPPHIRE_RAPIDS = "processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n\n" \
                  "processor : 1\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor : 0\nflags : fpu sse avx2 avx512f avx512bw\n"


def test_flags_are_read_from_cpuinfo_text():
    assert cpu_bf16.native_bf16_flags(SAPPHIRE_RAPIDS) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16.native_bf16_flags(SKYLAKE) == []
    assert cpu_bf16.native_bf16_flags("") == []


def test_hint_only_for_a_float32_cpu_fit_on_a_bf16_cpu():
    assert "--trainer.precision bf16-mixed" in cpu_bf16.bf16_hint("cpu", "32-true", ["amx_bf16"])
    assert cpu_bf16.bf16_hint("cpu", "bf16-mixed", ["amx_bf16"]) is None  # already asked for
    assert cpu_bf16.bf16_hint("cpu", "64-true", ["amx_bf16"]) is None  # a chosen precision is kept
    assert cpu_bf16.bf16_hint("cpu", "32-true", []) is None  # no native bf16: autocast would be slower
    assert cpu_bf16.bf16_hint("other", "32-true", ["amx_bf16"]) is None


def fit_logs(tiny_model, tmp_path, caplog, monkeypatch, cpuinfo: str, *extra: str):
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo)
    monkeypatch.setattr(cpu_bf16, "CPUINFO", info)
    args = demo_args(tiny_model("llama"), tmp_path / "run", "--trainer.max_steps", "2", "--trainer.limit_val_batches",
                     "0", "--baseline.enabled", "false", "--trainer.log_every_n_steps", "1", *extra)
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        cli = build_cli(["fit", *args])  # as `lit-lora fit` runs: LightningCLI's before_fit, then fit
    return cli, caplog.text


def test_fit_on_a_bf16_cpu_names_the_flag(tiny_model, tmp_path, caplog, monkeypatch):
    _, text = fit_logs(tiny_model, tmp_path, caplog, monkeypatch, SAPPHIRE_RAPIDS)
    assert "natively (amx_bf16, avx512_bf16): --trainer.precision bf16-mixed uses it" in text


def test_no_hint_without_native_bf16(tiny_model, tmp_path, caplog, monkeypatch):
    _, text = fit_logs(tiny_model, tmp_path, caplog, monkeypatch, SKYLAKE)
    assert "bfloat16 natively" not in text


def test_bf16_mixed_fit_on_cpu_keeps_float32_adapter_weights(tiny_model, tmp_path, caplog, monkeypatch):
    cli, text = fit_logs(tiny_model, tmp_path, caplog, monkeypatch, SAPPHIRE_RAPIDS,
                         "--trainer.precision", "bf16-mixed")
    assert "bfloat16 natively" not in text  # the flag is already there
    assert str(cli.trainer.precision) == "bf16-mixed"
    losses = read_losses(version_dir(tmp_path / "run"))
    assert sorted(losses) and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    trained = [p for p in cli.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    saved = adapter_tensors(version_dir(tmp_path / "run") / "adapter")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())
