"""A float32 CPU fit of a wide enough model on a CPU with native bfloat16 says how to use it;
``--trainer.precision bf16-mixed`` trains on a CPU with float32 adapter weights (autocast computes in bfloat16,
the weights and optimizer stay float32)."""

from __future__ import annotations

import logging

import pytest
import torch
from harness import adapter_tensors, build_cli, demo_args, read_losses, version_dir

from lit_lora import cpu_bf16

SAPPHIRE_RAPIDS = "processor : 0\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n\n" \
                  "processor : 1\nflags : fpu sse avx512f avx512_bf16 amx_bf16 amx_tile\n"
SKYLAKE = "processor : 0\nflags : fpu sse avx2 avx512f avx512bw\n"
HINT = "natively (amx_bf16, avx512_bf16): --trainer.precision bf16-mixed uses it"


def test_flags_are_read_from_cpuinfo_text():
    assert cpu_bf16.native_bf16_flags(SAPPHIRE_RAPIDS) == ["amx_bf16", "avx512_bf16"]
    assert cpu_bf16.native_bf16_flags(SKYLAKE) == []
    assert cpu_bf16.native_bf16_flags("") == []


def test_hint_only_for_a_float32_cpu_fit_of_a_wide_model_on_a_bf16_cpu():
    wide = cpu_bf16.MIN_HIDDEN_SIZE
    assert "--trainer.precision bf16-mixed" in cpu_bf16.bf16_hint("cpu", "32-true", ["amx_bf16"], wide)
    assert cpu_bf16.bf16_hint("cpu", "bf16-mixed", ["amx_bf16"], wide) is None  # already asked for
    assert cpu_bf16.bf16_hint("cpu", "64-true", ["amx_bf16"], wide) is None  # a chosen precision is kept
    assert cpu_bf16.bf16_hint("cpu", "32-true", [], wide) is None  # no native bf16: autocast would be slower
    assert cpu_bf16.bf16_hint("other", "32-true", ["amx_bf16"], wide) is None
    assert cpu_bf16.bf16_hint("cpu", "32-true", ["amx_bf16"], wide - 1) is None  # casts cost more than they gain
    assert cpu_bf16.bf16_hint("cpu", "32-true", ["amx_bf16"], None) is None


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory) -> str:
    """A one-layer Llama as wide as the hint asks (``MIN_HIDDEN_SIZE``)."""
    from lit_lora.tiny import build_tiny_model

    return str(build_tiny_model("llama", tmp_path_factory.mktemp("wide-llama"), hidden=cpu_bf16.MIN_HIDDEN_SIZE,
                                layers=1))


def fit_logs(model_dir, tmp_path, caplog, monkeypatch, cpuinfo: str, *extra: str):
    """``lit-lora fit`` of the demo config (2 steps) on ``model_dir`` with ``cpuinfo`` as /proc/cpuinfo."""
    info = tmp_path / "cpuinfo"
    info.write_text(cpuinfo)
    monkeypatch.setattr(cpu_bf16, "CPUINFO", info)
    args = demo_args(model_dir, tmp_path / "run", "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0",
                     "--baseline.enabled", "false", "--trainer.log_every_n_steps", "1", *extra)
    with caplog.at_level(logging.INFO, logger="lit_lora"):
        cli = build_cli(["fit", *args])  # as `lit-lora fit` runs it
    return cli, caplog.text


def test_fit_of_a_wide_model_on_a_bf16_cpu_names_the_flag(wide_model, tmp_path, caplog, monkeypatch):
    _, text = fit_logs(wide_model, tmp_path, caplog, monkeypatch, SAPPHIRE_RAPIDS)
    assert text.count(HINT) == 1


def test_no_hint_without_native_bf16(wide_model, tmp_path, caplog, monkeypatch):
    _, text = fit_logs(wide_model, tmp_path, caplog, monkeypatch, SKYLAKE)
    assert "bfloat16 natively" not in text


def test_no_hint_for_a_narrow_model(tiny_model, tmp_path, caplog, monkeypatch):
    _, text = fit_logs(tiny_model("llama"), tmp_path, caplog, monkeypatch, SAPPHIRE_RAPIDS)
    assert "bfloat16 natively" not in text


def test_bf16_mixed_fit_on_cpu_keeps_float32_adapter_weights(wide_model, tmp_path, caplog, monkeypatch):
    cli, text = fit_logs(wide_model, tmp_path, caplog, monkeypatch, SAPPHIRE_RAPIDS,
                         "--trainer.precision", "bf16-mixed")
    assert "bfloat16 natively" not in text  # the flag is already there
    assert str(cli.trainer.precision) == "bf16-mixed"
    losses = read_losses(version_dir(tmp_path / "run"))
    assert sorted(losses) == [1, 2] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    trained = [p for p in cli.model.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    saved = adapter_tensors(version_dir(tmp_path / "run") / "adapter")
    assert saved and all(t.dtype == torch.float32 for t in saved.values())


# ---- a 16-bit run on a CPU without fast 16-bit matrix products -------------------------------------------
SLOW = "multiplies bfloat16 matrices"


def test_the_slowdown_is_the_ratio_of_the_best_times_of_each_dtype():
    """Each round times float32, then the half dtype; the factor is best half time over best float32 time, so
    one disturbed product in either dtype does not move it. (The machine's own figure is a bench command in
    docs/benchmarks.md, not a timed test.)"""
    # (float32 start, end, bfloat16 start, end) per round: float32 takes 2, 1, 3; bfloat16 takes 90, 40, 41
    readings = iter([0, 2, 2, 92,   92, 93, 93, 133,   133, 136, 136, 177])
    slowdown = cpu_bf16.matmul_slowdown(torch.bfloat16, size=8, repeats=3, clock=lambda: next(readings))
    assert slowdown == 40.0
    assert next(readings, None) is None  # two readings per product, three rounds, two dtypes
    assert 0 < cpu_bf16.matmul_slowdown(torch.bfloat16, size=8, repeats=1) < float("inf")  # the real clock


def test_the_16_bit_dtypes_a_run_computes_in():
    layer = torch.nn.Linear(4, 4)
    assert cpu_bf16.half_dtypes_in_use("32-true", layer) == {}
    assert cpu_bf16.half_dtypes_in_use("bf16-mixed", layer) == {torch.bfloat16: ["--trainer.precision bf16-mixed"]}
    assert list(cpu_bf16.half_dtypes_in_use("16-mixed", layer)) == [torch.float16]
    stored = cpu_bf16.half_dtypes_in_use("bf16-mixed", layer.to(torch.bfloat16))
    assert stored == {torch.bfloat16: ["--trainer.precision bf16-mixed",
                                       "weights stored in bfloat16 (model.init_args.dtype)"]}


@pytest.mark.parametrize(("extra", "reason"), [
    (("--trainer.precision", "bf16-mixed"), "(--trainer.precision bf16-mixed)"),
    (("--model.init_args.dtype", "bfloat16"), "(weights stored in bfloat16 (model.init_args.dtype))"),
], ids=["bf16-mixed", "bf16-weights"])
def test_a_bf16_fit_on_a_cpu_slow_at_bf16_warns_once(extra, reason, tiny_model, tmp_path, caplog, monkeypatch):
    measured = []
    monkeypatch.setattr(cpu_bf16, "matmul_slowdown", lambda dtype: measured.append(dtype) or 40.0)
    _, text = fit_logs(tiny_model("llama"), tmp_path, caplog, monkeypatch, SKYLAKE, *extra)
    assert measured == [torch.bfloat16]
    assert text.count(SLOW) == 1 and f"40× slower than float32 (measured at start); this run computes in " \
                                       f"bfloat16 {reason}" in text
    assert "--trainer.precision 32-true --model.init_args.dtype float32" in text
    warned = [r for r in caplog.records if SLOW in r.getMessage()]
    assert warned[0].levelno == logging.WARNING


def test_no_warning_where_bf16_is_fast_or_unused(tiny_model, tmp_path, caplog, monkeypatch):
    measured = []
    monkeypatch.setattr(cpu_bf16, "matmul_slowdown", lambda dtype: measured.append(dtype) or 0.8)
    for run in ("fast", "float32"):
        (tmp_path / run).mkdir()
    _, text = fit_logs(tiny_model("llama"), tmp_path / "fast", caplog, monkeypatch, SKYLAKE,
                       "--trainer.precision", "bf16-mixed")
    assert measured == [torch.bfloat16] and SLOW not in text
    _, text = fit_logs(tiny_model("llama"), tmp_path / "float32", caplog, monkeypatch, SKYLAKE)
    assert measured == [torch.bfloat16] and SLOW not in text  # a float32 run measures nothing
