"""End to end through the CLI: `lit-lora fit` then `lit-lora test` on configs/tutorials/nli_roberta_lora.yaml
writes metrics.json."""

import json

from harness import QUIET, cli_exit, config, run_cli

CONFIG = config("tutorials/nli_roberta_lora")


def test_fit_then_test_writes_matched_and_mismatched_metrics(tiny_model, tmp_path, capsys):
    common = ["--config", CONFIG, "--model.init_args.model_name_or_path", tiny_model("roberta"),
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    run_cli(["fit", *common, "--trainer.max_steps", "20", "--trainer.val_check_interval", "10"])
    summary = capsys.readouterr().out
    assert "next: lit-lora test --config" in summary and "lit-lora compare" not in summary  # compare refuses it
    run = tmp_path / "lightning_logs" / "version_0"
    labels = json.loads((run / "adapter" / "classifier_labels.json").read_text())
    assert labels["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}
    assert (run / "config.yaml").read_text().count("label_names") == 0  # linked, not a config key

    capsys.readouterr()
    run_cli(["test", *common, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    said = capsys.readouterr().out
    # one row per metric: Lightning's table would repeat every set's metrics under each set's column
    assert "test metrics (checkpoint " in said and "DataLoader 1" not in said, said
    assert "; on the matched, mismatched splits (the data has no test split)" in said, said
    assert said.count("test_matched/accuracy ") == 1 and said.count("test_mismatched/accuracy ") == 1, said
    written = json.loads((tmp_path / "lightning_logs" / "version_1" / "metrics.json").read_text())
    assert written["stage"] == "test"
    for name in ("test_matched", "test_mismatched"):
        for metric in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "f1/neutral"):
            assert 0.0 <= written["metrics"][f"{name}/{metric}"] <= 1.0
        details = written["details"][name]
        confusion = details["confusion_matrix"]
        assert len(confusion) == 3 and sum(map(sum, confusion)) == details["n"] == 120
        correct = sum(confusion[i][i] for i in range(3))
        assert abs(correct / details["n"] - written["metrics"][f"{name}/accuracy"]) < 1e-6


def test_a_max_length_past_the_encoders_learned_positions_is_one_line_before_training(tiny_model, tmp_path):
    """RoBERTa embeds positions 2..513 (514 - padding index - 1): a 600-token max_length, or 500 plus P-tuning's 30
    virtual tokens, failed at the first long row with an index error inside the embedding."""
    common = ["fit", "--config", CONFIG, "--model.init_args.model_name_or_path", tiny_model("roberta"),
              "--trainer.default_root_dir", str(tmp_path), *QUIET, "--trainer.max_steps", "1"]
    status, line = cli_exit([*common, "--data.init_args.max_length", "600"])
    assert status == 1 and line == (
        "lit-lora: IncompatibleConfig: data.max_length 600 is more than the 512 positions "
        f"{tiny_model('roberta')} (roberta) has learned: set data.init_args.max_length to at most 512")
    ptuning = ["--model.init_args.adapter", "lit_lora.adapters.PTuning",
               "--model.init_args.adapter.init_args.num_virtual_tokens", "30"]
    status, line = cli_exit([*common, *ptuning, "--data.init_args.max_length", "500"])
    assert status == 1 and line.endswith(
        "data.max_length 500 + 30 virtual tokens is more than the 512 positions "
        f"{tiny_model('roberta')} (roberta) has learned: set data.init_args.max_length to at most 482")
