"""Every CPU bench in ``bench/`` still runs in its smoke form, and what it measures stays comparable: contenders
said to train on the same batches report the same first loss, batched generation answers as one call per row
does, grouping pads less than random order, both LM heads give one loss; the GPU script's CPU paths (``gpu.sh --dry-run``
with carried wheels, ``gpu_throughput.py --cpu-smoke``) run to the end. No timing is asserted (the benches print it; the
machine is shared).
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from harness import REPO, subprocess_env

pytestmark = pytest.mark.slow


def run_bench(script: str, *args: str, timeout: int = 600) -> str:
    """``python bench/<script> <args>`` from the repository root; its stdout (fails with the end of stderr)."""
    done = subprocess.run([sys.executable, str(REPO / "bench" / script), *args], cwd=REPO, env=subprocess_env(),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"bench/{script} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    return done.stdout


def test_train_throughput_contenders_run_on_the_batches_they_claim(tmp_path):
    # one contender per code path: lit-lora's CLI, the HF Trainer (bf16, bf16 base weights, flattening), the plain
    # loop over lit-lora's grouping under autocast and in float32
    names = ["lit-lora", "lit-lora packing", "plain grouped", "plain grouped bf16", "HF grouped bf16 weights",
             "HF flatten"]
    out = tmp_path / "results.json"
    run_bench("train_throughput.py", "--quick", "--only", ",".join(names), "--json-out", str(out))
    (results,) = json.loads(out.read_text())["rounds"]
    assert sorted(results) == sorted(names)
    for name, result in results.items():
        assert "error" not in result, (name, result.get("error"))
        assert result["tokens_per_s"] > 0 and result["steps"] == 4, (name, result)
        seconds = result["step_seconds"]  # every step timed on its own, for the batch-by-batch noise measure
        assert sorted(map(int, seconds)) == [1, 2, 3, 4] and all(v > 0 for v in seconds.values()), (name, seconds)
    # lit-lora's default and the plain loop over its grouping train the same first batch to the same loss
    assert results["lit-lora"]["step1_tokens"] == results["plain grouped"]["step1_tokens"]
    assert results["lit-lora"]["loss"]["1"] == pytest.approx(results["plain grouped"]["loss"]["1"], rel=1e-5)
    assert results["plain grouped bf16"]["loss"]["1"] != results["plain grouped"]["loss"]["1"]  # autocast ran


def test_step_spread_is_the_same_batchs_slowest_over_fastest_round_past_the_warm_up():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "bench" / "train_throughput.py")
    bench = sys.modules["train_throughput"] = importlib.util.module_from_spec(spec)  # its dataclasses look it up
    spec.loader.exec_module(bench)
    rounds = [{"step_seconds": {"1": 9.0, "2": 1.0, "3": 2.0, "4": 1.0}},
              {"step_seconds": {"1": 1.0, "2": 1.5, "3": 2.0, "4": 1.2}},
              {"step_seconds": {"1": 1.0, "2": 1.2, "3": 3.0, "4": 1.1}}]
    assert bench.step_spread(rounds, first_timed=2) == pytest.approx(1.5)  # median of 1.5, 1.5, 1.2 (step 1 left out)
    assert bench.step_spread(rounds, first_timed=4) == pytest.approx(1.2)
    assert bench.step_spread(rounds[:1], first_timed=2) is None  # one round: no spread


def test_stdlib_rows_come_from_the_cache_only_while_the_files_they_were_read_from_are_unchanged(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("stdlib_rows", REPO / "bench" / "stdlib_rows.py")
    rows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rows)
    source = tmp_path / "lib" / "shapes.py"
    source.parent.mkdir()
    body = "    area = width * height\n    perimeter = 2 * (width + height)\n    return area, perimeter\n"
    source.write_text(f'def box(width, height):\n    """Area and perimeter of a box."""\n{body}')
    monkeypatch.setattr(rows, "stdlib_files", lambda: [source])
    monkeypatch.setenv("LIT_LORA_BENCH_CACHE", str(tmp_path / "cache"))
    first = rows.stdlib_rows()
    assert [r["instruction"] for r in first] == ["Area and perimeter of a box."]
    (cached,) = (tmp_path / "cache").glob("stdlib-rows-*.jsonl")
    assert rows.stdlib_rows() == first  # read back from the cache
    source.write_text(source.read_text().replace("Area and perimeter", "Perimeter and area,"))
    assert [r["instruction"] for r in rows.stdlib_rows()] == ["Perimeter and area, of a box."]  # a new key
    assert len(list((tmp_path / "cache").glob("stdlib-rows-*.jsonl"))) == 2 and cached.exists()
    monkeypatch.setenv("LIT_LORA_BENCH_CACHE", str(source))  # a file, not a folder: no cache, the same rows
    assert [r["instruction"] for r in rows.stdlib_rows()] == ["Perimeter and area, of a box."]


@pytest.mark.parametrize("per_row_prompts", [None, 5])
def test_generation_bench_batches_answer_as_per_row_calls(tmp_path, per_row_prompts):
    """``--per-row-prompts N`` (the GPU step's) times one call per row on the first N prompts: the ratio is of rates."""
    out = tmp_path / "generation.json"
    run_bench("generation.py", "--quick", "--json-out", str(out),
              *(["--per-row-prompts", str(per_row_prompts)] if per_row_prompts else []))
    results = json.loads(out.read_text())["results"]
    batched = {name: r for name, r in results.items() if name != "per_row"}
    assert batched and all(r["differing_rows"] == [] for r in batched.values()), batched
    per_row = results["per_row"]
    assert per_row["calls"] == len(per_row["new_tokens"]) == (per_row_prompts or 16)
    for r in batched.values():
        assert r["ratio_vs_per_row"] == pytest.approx(r["rows_per_s"] / per_row["rows_per_s"])


def test_generation_bench_refuses_more_per_row_prompts_than_prompts():
    done = subprocess.run([sys.executable, str(REPO / "bench" / "generation.py"), "--quick", "--per-row-prompts", "17"],
                          cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--per-row-prompts takes 1 to --prompts (16), not 17" in done.stderr, done.stderr


def test_padding_bench_orders_the_batchings():
    out = run_bench("padding.py", "--rows", "400", "--epochs", "1")
    padding = {line[:20].strip(): float(line[20:].split()[0].rstrip("%")) for line in out.splitlines()
               if line[:20].strip() in ("lit-lora grouped", "transformers grouped", "random", "lit-lora packing")}
    assert len(padding) == 4, out
    assert padding["lit-lora grouped"] < padding["random"] and padding["lit-lora packing"] < padding["random"]


def test_label_only_loss_bench_compares_equal_losses():
    out = run_bench("label_only_loss.py", "--quick")
    losses = {line.split("  ")[0].strip(): line.split()[-1] for line in out.splitlines()
              if line.startswith(("prompt-masked / ", "all-labelled / "))}
    assert len(losses) == 4, out
    for batch in ("prompt-masked", "all-labelled"):  # both heads compute the same loss (printed to 5 decimals)
        assert losses[f"{batch} / full"] == losses[f"{batch} / label-only"], losses


def test_lora_update_bench_compares_equal_steps():
    """peft's LoRA layer and lit-lora's fused one give the same first step (alpha / r = 2: to the bit)."""
    out = run_bench("lora_update.py", "--quick")
    assert "first step: |loss peft - loss fused| 0, largest relative gradient difference 0" in out, out
    assert re.search(r"^median +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M), out


def test_lora_dropout_bench_times_both_dropouts():
    """torch's and lit-lora's dropout train the same model (first losses of one scale), both timed."""
    out = run_bench("lora_dropout.py", "--quick")
    losses = re.search(r"first loss: torch ([\d.]+), lit-lora ([\d.]+), none ([\d.]+)", out)
    assert losses and abs(float(losses[1]) - float(losses[2])) < 0.05 * float(losses[3]), out
    assert len(re.findall(r"^median +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M)) == 2, out


def test_causal_mask_bench_times_equal_steps():
    """The padding mask and the causal mask alone give the same first step on both batches (the bench fails if
    lit-lora kept the mask of a right-padded batch)."""
    out = run_bench("causal_mask.py", "--quick")
    gaps = re.findall(r"\|loss mask - loss causal\| (\S+), largest relative gradient difference (\S+)", out)
    assert len(gaps) == 2 and all(float(loss) < 1e-5 and float(grad) < 1e-5 for loss, grad in gaps), out
    assert len(re.findall(r"^median +[\d.]+ +[\d.]+ +[\d.]+$", out, re.M)) == 2, out


def test_step_profile_bench_profiles_both_precisions():
    out = run_bench("step_profile.py", "--quick", "--top", "3")
    assert "float32:" in out and "bfloat16 autocast:" in out and "aten::mm" in out, out
    floors = re.findall(r"matrix products: ([\d.]+) GFLOP a step; torch\.mm .*: ([\d.]+) GFLOP/s", out)
    assert len(floors) == 2 and all(float(flop) > 0 and float(rate) > 0 for flop, rate in floors), out


def fake_wheel(out, name: str, version: str) -> None:
    """A one-module wheel ``name`` at ``version`` (``import name; name.__version__``) in ``out``."""
    unpacked = out / "src" / f"{name}-{version}"
    info = unpacked / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (unpacked / f"{name}.py").write_text(f"__version__ = {version!r}\n")
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / "RECORD").write_text("")
    subprocess.run([sys.executable, "-m", "wheel", "pack", "-d", str(out), str(unpacked)], check=True,
                   capture_output=True)


def test_gpu_script_dry_run_installs_the_carried_wheels_ahead_and_estimates_every_variant(tmp_path):
    """``bash bench/gpu.sh --wheels DIR --dry-run`` on a CPU: the wheels go ahead of the interpreter's packages
    (a flash_attn the environment lacks is found), a ``lit-lora`` command is on the PATH, every default variant
    is estimated, every step reports ok, and the results folder holds no more files than a lent machine's run
    returns (8)."""
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    wheels.mkdir()
    fake_wheel(wheels, "flash_attn", "0.0.1")
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu.sh"), "--wheels", str(wheels), "--dry-run"],
                          cwd=tmp_path, env=subprocess_env({"OUT": str(out), "PYTHON": sys.executable}),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    summary = (out / "summary.txt").read_text()
    assert "ok env" in summary and "ok throughput" in summary and "FAILED" not in summary, summary
    env_log = summary  # the env step's report, in the summary
    assert "flash_attn 0.0.1" in env_log, env_log
    site = re.search(r"lit-lora: (/tmp/lit-lora-site\.\w+)/bin/lit-lora", env_log)
    assert site, env_log
    variants = {v["variant"]: v for v in json.loads((out / "gpu_throughput.json").read_text())["variants"]}
    assert sorted(variants) == ["lora_bf16", "lora_bf16_varlen", "qlora_nf4"]
    assert all(v["estimate_total_gib"] > 1 for v in variants.values()), variants  # the 8-layer 8B shape
    assert not Path(site.group(1)).exists()  # the temporary install is removed at exit
    assert len([path for path in out.rglob("*") if path.is_file()]) <= 8, sorted(out.rglob("*"))


def test_a_short_gpu_bench_budget_measures_the_first_variants_whole():
    """Three variants: with time for all, each of the first keeps a share for the rest; with time for one, the first
    gets it (a minute) instead of every variant getting too little and being skipped; past the budget, nothing."""
    spec = importlib.util.spec_from_file_location("gpu_throughput", REPO / "bench" / "gpu_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.variant_deadline(0, 400, after=2) == 200 and bench.variant_deadline(200, 400, after=1) == 350
    assert bench.variant_deadline(350, 400, after=0) == 400
    assert bench.variant_deadline(0, 90, after=2) == bench.MIN_VARIANT_S + 5  # not 45 s: too short, skipped
    assert bench.variant_deadline(0, 40, after=2) == 40  # never past the budget


def test_gpu_throughput_cpu_smoke_trains_every_variant_packed(tmp_path):
    """``bench/gpu_throughput.py --cpu-smoke``: the GPU bench's whole path (data, tokenizer, model, ``lit-lora fit``
    with packing for LoRA bf16, QLoRA NF4 and LoRA bf16 on ``torch_varlen``, the measurements) on a tiny model. A peak is passed so that MFU is
    computed: with the head counted on labelled tokens only (prompts carry none) it is below the 6N figure, and
    counting a frozen base's work below that. Each variant's fit and estimate logs come out on stdout, and only
    the two report files go to ``--out``."""
    stdout = run_bench("gpu_throughput.py", "--cpu-smoke", "--steps", "3", "--warmup", "1", "--peak-tflops", "1",
              "--out", str(tmp_path))
    setup = json.loads((tmp_path / "gpu_throughput.json").read_text())
    assert setup["setup"]["packing"] is True
    for variant in setup["variants"]:
        assert variant["steps"] == 3 and variant["tokens_per_s"] > 0, variant
        assert variant["packing"] and variant["padding"] < 0.1, variant
        # transformers' choice on a CPU (the GPU default is models/attention.py), or the one the variant names
        assert variant["attention"] == ("torch_varlen" if variant["variant"] == "lora_bf16_varlen" else "sdpa"), variant
        if variant["attention"] == "torch_varlen":  # no kernel on a CPU: stacked sequences, no flattened row
            assert variant["attention_paths"] == {}, variant
        assert variant["estimate_total_gib"] > 0 and set(variant["loss"]) == {"1", "3"}, variant
        assert 0 < variant["label_tokens_per_s"] < variant["tokens_per_s"], variant
        assert 0 < variant["mfu_frozen_base"] < variant["mfu_label_head"] < variant["mfu"], variant
        for log_name in ("estimate.log", "fit.log"):
            assert f"----- {variant['variant']}: {log_name} -----" in stdout, stdout[-3000:]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["gpu_throughput.json", "gpu_throughput.md"]
    assert [v["variant"] for v in setup["variants"]] == ["lora_bf16", "lora_bf16_varlen", "qlora_nf4"]
    table = (tmp_path / "gpu_throughput.md").read_text()
    assert "| lora_bf16_varlen | torch_varlen: packed sequences stacked, through sdpa |" in table, table


def test_cache_key_bench_hashes_the_tokenizer_once_a_run():
    out = run_bench("cache_key.py", "--quick")
    times = re.search(r"^median: key of the first split ([\d.]+) ms, of the next ([\d.]+) ms", out, re.M)
    assert times and float(times[1]) > 0 and float(times[2]) > 0, out
    assert "tokenizer: 4,096 tokens" in out, out


def test_the_gpu_scripts_test_step_fails_where_torch_sees_no_cuda_device():
    """``bench/gpu.sh`` runs ``pytest -m gpu`` with ``LIT_LORA_REQUIRE_CUDA=1``: on a machine where torch finds no GPU
    that is an error, not a green run of skipped tests."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "--collect-only",
               "tests/test_packing.py"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env({"LIT_LORA_REQUIRE_CUDA": "1", "CUDA_VISIBLE_DEVICES": ""}))
    assert done.returncode != 0 and "torch sees no CUDA device" in done.stdout + done.stderr, done.stdout[-2000:]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=subprocess_env({"CUDA_VISIBLE_DEVICES": ""}))
    assert done.returncode == 0, done.stdout[-2000:]  # without it, the gpu tests are collected (and skipped)
