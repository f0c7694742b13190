"""Evaluation counts every row once, whatever the batch size and the number of ranks.

Seven validation rows: one process at batch 1 and at batch 7, and two DDP ranks (gloo) at batch 1,
where the sampler repeats a row to give both ranks four. Loss (label-token weighted), generation
metrics and ``predictions.jsonl`` must agree across the three."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from harness import DEMO, run_cli_subprocess, version_dir

pytestmark = pytest.mark.faults
ROWS = 7


def validate(model_dir: str, root: Path, batch_size: int, devices: int) -> tuple[dict, list[dict]]:
    args = ["validate", "--config", DEMO,
            "--model.init_args.model_name_or_path", model_dir,
            "--trainer.devices", str(devices), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--data.init_args.max_samples", "70",
            "--data.init_args.max_eval_samples", str(ROWS), "--data.init_args.eval_batch_size", str(batch_size),
            "--model.init_args.evaluation.max_new_tokens", "8"]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    result = run_cli_subprocess(args, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    run = version_dir(root)
    metrics = json.loads((run / "metrics.json").read_text())["metrics"]
    predictions = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    return metrics, predictions


def test_rows_count_once_at_any_batch_size_and_world_size(tiny_model, tmp_path):
    model = tiny_model("llama")
    runs = {name: validate(model, tmp_path / name, batch, devices)
            for name, batch, devices in [("batch1", 1, 1), ("batch7", ROWS, 1), ("ranks2", 1, 2)]}
    reference, reference_rows = runs["batch1"]
    assert reference["val_loss"] > 0 and reference["val_generated_rows"] == ROWS
    for name, (metrics, rows) in runs.items():
        assert len(rows) == ROWS, name
        assert [r["prompt"] for r in rows] == [r["prompt"] for r in reference_rows], name  # in row order
        for key in ("val_loss", "val_perplexity", "val_generated_rows"):
            assert metrics[key] == pytest.approx(reference[key], rel=1e-5), (name, key)
    # the answers are greedy: two processes of one rank each produce the same ones
    assert runs["ranks2"][0]["val_bleu"] == pytest.approx(reference["val_bleu"], rel=1e-6)
