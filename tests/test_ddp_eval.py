"""Evaluation with generation under 2-process DDP (gloo, CPU) finishes and writes its files once."""

import json

from harness import DEMO, run_cli_subprocess, version_dir


def test_validate_with_generation_under_ddp_writes_metrics_and_predictions(tmp_path):
    args = ["validate", "--config", DEMO,
            "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.default_root_dir", str(tmp_path),
            "--trainer.enable_progress_bar", "false", "--data.init_args.max_samples", "60",
            "--data.init_args.max_eval_samples", "6", "--data.init_args.eval_batch_size", "1",
            "--model.init_args.evaluation.max_new_tokens", "8"]
    # a collective called on rank 0 only (e.g. trainer.log_dir) would hang here: the timeout turns that into a failure
    result = run_cli_subprocess(args, timeout=240, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    run = version_dir(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stage"] == "validate" and "val_loss" in metrics["metrics"]
    predictions = (run / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 6  # 3 rows per rank, gathered once
