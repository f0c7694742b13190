"""``bench/gpu_throughput.py``'s reading of ``lit-lora estimate``, with the process's outcome stood in for.

lit-lora exits 1 both when the estimate does not fit in ``--gpu_memory_gib`` (the report, with its total, is a
result) and on an error (an input error, a traceback): an error is the variant's ``estimate_error``, in the
table's note and the exit status, not an estimate column left blank as if nothing had gone wrong.
"""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import pytest
from harness import REPO

REPORT = "lit-lora estimate\n  weights   5.2 GiB\n  total    21.30 GiB   does not fit in 16 GiB\n"


@pytest.fixture
def bench():
    spec = importlib.util.spec_from_file_location("gpu_throughput_estimate", REPO / "bench" / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def estimated(bench, monkeypatch, tmp_path: Path, returncode: int, stdout: str) -> dict:
    def finished(cmd, env, timeout, log_path):
        log_path.write_text(stdout)
        return subprocess.CompletedProcess(cmd, returncode, stdout, "")

    monkeypatch.setattr(bench, "run", finished)
    ctx = {"model": tmp_path / "model", "data": tmp_path / "rows.jsonl", "packing": True, "steps": 15,
           "work": tmp_path, "accelerator": "gpu", "env": {}, "gpu": {"memory_gib": 16.0}}
    return bench.estimate_variant("lora_bf16", ctx)


def test_an_estimate_that_does_not_fit_is_still_its_total(bench, monkeypatch, tmp_path):
    found = estimated(bench, monkeypatch, tmp_path, 1, REPORT)
    assert found["estimate_total_gib"] == pytest.approx(21.30) and "estimate_error" not in found


def test_an_estimate_that_failed_is_an_error_not_a_blank(bench, monkeypatch, tmp_path):
    found = estimated(bench, monkeypatch, tmp_path, 1, "Traceback (most recent call last):\nRuntimeError: boom\n")
    assert "estimate_total_gib" not in found and ", no total" in found["estimate_error"], found
    setup = {"gpu": {"device": "NVIDIA H100 80GB HBM3"}, "layers": 8, "parameters": 2.8e9, "flop_parameters": 2.27e9,
             "packing": True, "steps": 15, "warmup": 3, "peak_note": "989", "dry_run": False}
    table = bench.markdown({"setup": setup, "variants": [{"variant": "lora_bf16", "tokens_per_s": 33000.0, **found}]})
    assert "lit-lora estimate exited 1, no total" in table.splitlines()[-1], table
