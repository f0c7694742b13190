"""Evaluation under 2-process DDP (gloo, CPU) finishes, writes its files once and scores every row once.

Label metrics: five rows per set on two ranks at batch 2 give rank 1 rows 1, 3 and then a batch of one repeated
row, which counts for nothing; torchmetrics refuses an empty update, so that batch used to stop ``lit-lora
validate`` (and an evaluation set smaller than the number of ranks always did)."""

import json

import pytest
import torch
from harness import DEMO, QUIET, config, run_cli_subprocess, version_dir

from lit_lora.evaluation.classification import ClassificationMetrics

LABELS = ["entailment", "neutral", "contradiction"]


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


def test_an_empty_update_counts_nothing():
    metrics = ClassificationMetrics(LABELS, allow_unparseable=True)
    metrics.update(torch.tensor([0, -1]), torch.tensor([0, 1]))
    metrics.update(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))
    scalars, details = metrics.compute()
    assert details["n"] == 2 and scalars["accuracy"] == 0.5 and scalars["unparseable"] == 1.0


def metrics_of(model: str, root, devices: int) -> dict:
    args = ["validate", "--config", config("tutorials/nli_roberta_lora"), *QUIET,
            "--model.init_args.model_name_or_path", model, "--trainer.default_root_dir", str(root),
            "--trainer.devices", str(devices), "--data.init_args.max_eval_samples", "5",
            "--data.init_args.eval_batch_size", "2"]
    if devices > 1:
        args += ["--trainer.strategy", "ddp"]
    result = run_cli_subprocess(args, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((version_dir(root) / "metrics.json").read_text())


def test_a_rank_whose_last_batch_is_all_repeats_scores_the_same_rows(tiny_model, tmp_path):
    model = tiny_model("roberta")
    one, two = metrics_of(model, tmp_path / "one", 1), metrics_of(model, tmp_path / "two", 2)
    for name in ("val_matched", "val_mismatched"):
        assert two["details"][name]["n"] == one["details"][name]["n"] == 5
        assert two["details"][name]["confusion_matrix"] == one["details"][name]["confusion_matrix"]
        assert two["metrics"][f"{name}/loss"] == pytest.approx(one["metrics"][f"{name}/loss"], rel=1e-5)
