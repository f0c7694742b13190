"""Evaluation with generation under 2-process DDP (gloo, CPU) finishes and writes its files once."""

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_validate_with_generation_under_ddp_writes_metrics_and_predictions(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    args = ["lit-lora", "validate", "--config", str(ROOT / "configs" / "demo.yaml"),
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--data.init_args.max_samples", "60",
            "--data.init_args.max_eval_samples", "6", "--data.init_args.eval_batch_size", "1",
            "--model.init_args.evaluation.max_new_tokens", "8"]
    # a collective called on rank 0 only (e.g. trainer.log_dir) would hang here: the timeout turns that into a failure
    result = subprocess.run(["timeout", "-k", "5", "240", *args], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = (tmp_path / "lightning_logs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["stage"] == "validate" and "val_loss" in metrics["metrics"]
    predictions = (run_dir / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 6  # 3 rows per rank, gathered once
