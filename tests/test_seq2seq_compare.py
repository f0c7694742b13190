"""End to end through the CLI: LoRA on a tiny T5 (configs/tutorials/codet5_lora.yaml), then `lit-lora compare`.

The rows are one learnable family in the python-codes-25k schema ("the sum of x and y" -> ``def sum_x_y(x, y):
return x + y``): a random tiny T5 learns their shape in a few epochs whatever the seed, so "the tuned model scores
higher" tests ``compare`` rather than the luck of one random stream (on the bundled mixed-task sample the tuned
tiny model's ROUGE-L beat the base on about half the seeds).
"""

import itertools
import json
import random

import pytest
from harness import cli_exit, config, run_cli
from torchmetrics.text import ROUGEScore, SacreBLEUScore

CONFIG = config("tutorials/codet5_lora")
OPERATIONS = [("sum", "+"), ("difference", "-"), ("product", "*"), ("quotient", "/")]


def arithmetic_rows(count: int = 80) -> list[dict]:
    """Distinct instruction rows: a two-argument function of one of four operations on two named arguments."""
    pairs = list(itertools.permutations("abcdefghkmnpqrstuvwxyz", 2))
    random.Random(0).shuffle(pairs)
    rows = []
    for i, (x, y) in enumerate(pairs[:count]):
        name, op = OPERATIONS[i % len(OPERATIONS)]
        rows.append({"instruction": f"Write a Python function that returns the {name} of {x} and {y}.", "input": "",
                     "output": f"```python\ndef {name}_{x}_{y}({x}, {y}):\n    return {x} {op} {y}\n```"})
    return rows


def data_args(model, source):
    return ["--config", CONFIG, "--model.init_args.model_name_or_path", model, "--data.init_args.source", source,
            "--data.init_args.max_samples", "64", "--data.init_args.max_eval_samples", "8",
            "--data.init_args.max_length", "128"]


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    model = tiny_model("t5")
    root = tmp_path_factory.mktemp("codet5")
    source = root / "arithmetic.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in arithmetic_rows()))
    run_cli(["fit", *data_args(model, str(source)), "--trainer.max_epochs", "6", "--trainer.default_root_dir",
             str(root), "--trainer.enable_progress_bar", "false", "--trainer.accelerator", "cpu",
             "--model.init_args.optim.lr", "0.01"])
    run = root / "lightning_logs" / "version_0"
    return model, run, str(source)


def compare(trained, out, *extra):
    model, run, source = trained
    run_cli(["compare", *data_args(model, source), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
             "--out_dir", str(out), "--right_if", "0.01", "--model.init_args.evaluation.max_new_tokens", "32",
             "--trainer.accelerator", "cpu", *extra])
    return json.loads((out / "report.json").read_text()), (out / "report.md").read_text()


def test_lora_seq2seq_run_lowers_the_loss(trained):
    _, run, _ = trained
    before_after = json.loads((run / "before_after.json").read_text())
    assert before_after["tuned_val_loss"] < before_after["base_val_loss"]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["method"] == "lora" and 0 < summary["trainable_params"] < summary["total_params"]


def test_compare_writes_both_columns_and_examples(trained, tmp_path, recwarn):
    report, md = compare(trained, tmp_path)
    # the test trainer needs none of the training run's callback states: no advice to add them
    assert not [w for w in recwarn if "callbacks used to create the checkpoint" in str(w.message)]
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


def test_compare_keeps_the_row_limit_of_a_smoke_run_for_both_models(trained, tmp_path):
    """``--trainer.limit_test_batches 1`` scores one batch of rows, base and fine-tuned alike (it was dropped:
    every row was generated while Lightning said one batch would be used)."""
    report, md = compare(trained, tmp_path, "--trainer.limit_test_batches", "1", "--data.init_args.eval_batch_size", "3")
    assert report["run"]["rows"] == 3
    for side in ("base", "tuned"):
        assert len((tmp_path / side / "predictions.jsonl").read_text().splitlines()) == 3
    assert "No curve" not in md


def test_the_console_names_the_predictions_files_that_were_written(trained, tmp_path, capsys):
    """``evaluation.predictions_file`` names each model's predictions; the closing summary points at those."""
    compare(trained, tmp_path, "--trainer.limit_test_batches", "1",
            "--model.init_args.evaluation.predictions_file", "answers.jsonl")
    line = next(line for line in capsys.readouterr().out.splitlines() if line.strip().startswith("predictions "))
    written = [tmp_path / side / "answers.jsonl" for side in ("base", "tuned")]
    assert all(path.is_file() for path in written)
    assert line.split(None, 1)[1] == ", ".join(map(str, written))


def test_a_second_comparison_gets_a_directory_of_its_own(trained):
    """The default ``<run>/compare`` holding an earlier report: the next goes to ``compare_1``; an explicit
    ``--out_dir`` holding one is refused before anything is scored."""
    model, run, source = trained
    earlier = run / "compare"
    earlier.mkdir(exist_ok=True)
    (earlier / "report.md").write_text("an earlier comparison")
    args = ["compare", *data_args(model, source), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"),
            "--trainer.limit_test_batches", "1", "--trainer.accelerator", "cpu"]
    run_cli(args)
    assert (earlier / "report.md").read_text() == "an earlier comparison"
    assert json.loads((run / "compare_1" / "report.json").read_text())["run"]["rows"] > 0
    with pytest.raises(SystemExit, match="holds an earlier evaluation .report.json, report.md.: pass another"):
        run_cli([*args, "--out_dir", str(earlier)])
    assert not (earlier / "base").exists()


def test_evaluating_on_training_rows_needs_the_switch(trained, tmp_path, capsys):
    on_train = ["--data.init_args.validation_source", trained[2]]  # validation = first rows of the training file
    with pytest.raises(SystemExit) as exit_info:
        compare(trained, tmp_path / "refused", *on_train)
    assert exit_info.value.code == 2
    assert "8 of 8 evaluated rows" in capsys.readouterr().err
    assert not (tmp_path / "refused" / "report.md").exists()
    report, md = compare(trained, tmp_path / "allowed", *on_train, "--allow_train_overlap")
    assert md.splitlines()[0].startswith("**WARNING: evaluated on rows the model was trained on** (8 of 8")
    assert report["trained_on_evaluated_rows"] is True


# ``--adapter_dir`` that compare cannot load is refused before the base model is scored (on a real model that is the
# whole base evaluation, generation included), in one line naming the directory.
def compare_exit(trained, adapter_dir, out, *extra):
    model, _, source = trained
    return cli_exit(["compare", *data_args(model, source), "--adapter_dir", str(adapter_dir), "--out_dir", str(out),
                     "--trainer.accelerator", "cpu", "--trainer.limit_test_batches", "1", *extra])


def test_a_run_directory_given_for_the_adapter_is_refused_before_scoring(trained, tmp_path):
    _, run, _ = trained  # the run directory, not its adapter/ folder: neither adapter_config.json nor config.json
    status, line = compare_exit(trained, run, tmp_path / "out")
    assert status == 1 and line.startswith("lit-lora: IncompatibleConfig: --adapter_dir ") and str(run) in line, line
    assert "adapter_config.json" in line and "config.json" in line
    assert not (tmp_path / "out" / "base").exists()  # nothing was scored


def test_a_peft_adapter_for_a_config_without_one_is_refused_before_scoring(trained, tmp_path):
    _, run, _ = trained
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    status, line = compare_exit(trained, run / "adapter", tmp_path / "out",
                                "--model.init_args.adapter", "lit_lora.adapters.FullFineTuning")
    assert status == 1 and "is a peft adapter" in line and "full" in line, line
    assert not (tmp_path / "out" / "base").exists()


# compare's numbers, recomputed: each column's BLEU / ROUGE / exact match equal torchmetrics run directly on that
# column's written predictions, both columns scored the same rows, and the console prints report.json's numbers.
def test_report_numbers_are_the_predictions_scored_directly(trained, tmp_path, capsys):
    report, _ = compare(trained, tmp_path)
    console = capsys.readouterr().out
    rows = {side: [json.loads(line) for line in (tmp_path / side / "predictions.jsonl").read_text().splitlines()]
            for side in ("base", "tuned")}
    assert [(r["prompt"], r["reference"]) for r in rows["base"]] == [(r["prompt"], r["reference"]) for r in
                                                                      rows["tuned"]]
    for side, written in rows.items():
        preds, refs = [r["prediction"] for r in written], [r["reference"] for r in written]
        bleu = float(SacreBLEUScore(tokenize="13a")(preds, [[r] for r in refs]))
        rouge = ROUGEScore(rouge_keys="rougeL")(preds, refs)
        exact = sum(" ".join(p.split()) == " ".join(r.split()) for p, r in zip(preds, refs)) / len(refs)
        metrics = {name: row[side] for name, row in report["metrics"].items()}
        assert metrics["bleu"] == pytest.approx(bleu, abs=1e-6), side
        assert metrics["rougeL_fmeasure"] == pytest.approx(float(rouge["rougeL_fmeasure"]), abs=1e-6), side
        assert metrics["exact_match"] == pytest.approx(exact), side
        assert metrics["generated_rows"] == len(written) == report["run"]["rows"]
    for name in ("loss", "bleu", "rougeL_fmeasure"):
        row = report["metrics"][name]
        assert f"{row['base']:.4g} -> {row['tuned']:.4g}" in console, name
