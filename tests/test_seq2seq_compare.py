"""End to end through the CLI: LoRA on a tiny T5 (configs/tutorials/codet5_lora.yaml), then `lit-lora compare`."""

import json

import pytest
from harness import SAMPLES, config, run_cli

CONFIG = config("tutorials/codet5_lora")
SAMPLE = str(SAMPLES / "python_codes_25k.jsonl")


def data_args(model):
    return ["--config", CONFIG, "--model.init_args.model_name_or_path", model,
            "--data.init_args.max_samples", "64", "--data.init_args.max_eval_samples", "8",
            "--data.init_args.max_length", "128"]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    model = tiny_model("t5")
    root = tmp_path_factory.mktemp("codet5")
    run_cli(["fit", *data_args(model), "--trainer.max_epochs", "6", "--trainer.default_root_dir", str(root),
             "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
             "--model.init_args.optim.lr", "0.01"])
    run = root / "lightning_logs" / "version_0"
    return model, run


def compare(model, run, out, *extra):
    run_cli(["compare", *data_args(model), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), "--out_dir",
             str(out), "--right_if", "0.01", "--model.init_args.evaluation.max_new_tokens", "32",
             "--trainer.accelerator", "cpu", *extra])
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_lora_seq2seq_run_lowers_the_loss(trained):
    _, run = trained
    before_after = json.loads((run / "before_after.json").read_text())
    assert before_after["tuned_val_loss"] < before_after["base_val_loss"]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["method"] == "lora" and 0 < summary["trainable_params"] < summary["total_params"]


def test_compare_writes_both_columns_and_examples(trained, tmp_path):
    model, run = trained
    report, md = compare(model, run, tmp_path)
    metrics = report["metrics"]
    for name in ("loss", "perplexity", "bleu", "rouge1_fmeasure", "rouge2_precision", "rougeL_recall", "exact_match"):
        assert metrics[name]["base"] is not None and metrics[name]["tuned"] is not None, name
    assert metrics["loss"]["tuned"] < metrics["loss"]["base"]
    assert metrics["rougeL_fmeasure"]["tuned"] > metrics["rougeL_fmeasure"]["base"]  # the tuned model improved
    assert report["examples"]["fixed_count"] >= 1 and report["examples"]["fixed"][0]["tuned"]
    assert md.splitlines()[0] == "# Base model vs fine-tuned"
    rows_evaluated = report["run"]["rows"]
    assert "| rougeL_fmeasure |" in md and "### row" in md
    assert f"overlap with training rows (exact duplicates of the normalised input): 0 of {rows_evaluated}" in md
    assert report["run"]["trainable_params"] > 0 and report["run"]["train_wall_time_s"] is not None
    assert (tmp_path / "loss_curve.png").stat().st_size > 0
    for side in ("base", "tuned"):
        rows = [json.loads(line) for line in (tmp_path / side / "predictions.jsonl").read_text().splitlines()]
        assert len(rows) == rows_evaluated > 0 and {"prompt", "reference", "prediction"} <= set(rows[0])


def test_evaluating_on_training_rows_needs_the_switch(trained, tmp_path, capsys):
    model, run = trained
    on_train = ["--data.init_args.validation_source", SAMPLE]  # validation = first rows of the training file
    with pytest.raises(SystemExit) as exit_info:
        compare(model, run, tmp_path / "refused", *on_train)
    assert exit_info.value.code == 2
    assert "8 of 8 evaluated rows" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "report.md").exists()
    report, md = compare(model, run, tmp_path / "allowed", *on_train, "--allow_train_overlap")
    assert md.splitlines()[0].startswith("**WARNING: evaluated on rows the model was trained on** (8 of 8")
    assert report["trained_on_evaluated_rows"] is True
