"""The `lit-lora` entry point: the demo config end to end, --print_config round trip, lean checkpoints."""

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml
from harness import DEMO, cli_exit, cli_run, run_cli, run_cli_subprocess, validation_rows, version_dir

SMALL = ["--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
         "--data.init_args.max_samples", "40", "--data.init_args.batch_size", "4"]


def test_demo_config_runs_end_to_end_through_the_entry_point(tmp_path, capsys, caplog):
    result = run_cli_subprocess(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL])
    out = result.stdout + result.stderr
    assert "trainable params:" in out and "trainable%:" in out
    assert "validation loss: base" in out and "-> tuned" in out
    # progress is logged (stderr); stdout holds the results a script reads: the figures and the closing summary
    assert "trainable params:" in result.stderr and "[lit-lora] saved the lora adapter" in result.stderr
    assert "trainable params:" not in result.stdout and "[lit-lora] saved" not in result.stdout
    assert "validation loss: base" in result.stdout and "[lit-lora] done:" in result.stdout
    run = version_dir(tmp_path)
    adapter = run / "adapter"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()
    before_after = json.loads((run / "before_after.json").read_text())
    assert before_after["tuned_val_loss"] < before_after["base_val_loss"]
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["trainable_params"] < summary["total_params"]

    # checkpoints hold the trainable weights only, each with its peft-format twin
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)
    assert (ckpt.with_name(ckpt.stem + "-adapter") / "adapter_model.safetensors").exists()

    # `lit-lora test --ckpt_path` rebuilds the base, loads the adapter and writes metrics.json (in this process)
    capsys.readouterr()
    run_cli(["test", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "test"), *SMALL,
             "--ckpt_path", str(ckpt)])
    metrics = json.loads((version_dir(tmp_path / "test") / "metrics.json").read_text())
    assert abs(metrics["metrics"]["test_loss"] - before_after["tuned_val_loss"]) < 1e-5  # one aggregation
    assert "; on the validation split (the data has no test split)" in capsys.readouterr().out  # said, not hidden

    # other data settings than the checkpoint's: the overlap check could miss trained rows, so say so
    run_cli(["test", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path / "other"), *SMALL,
             "--data.init_args.max_samples", "30", "--ckpt_path", str(ckpt)])
    assert "max_samples: trained with 40, now 30" in caplog.text


def printed(args: list[str]) -> str:
    """stdout of ``lit-lora <args>`` in this process, for a command that prints and exits 0 (help, print_config)."""
    result = cli_run(args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_print_config_round_trips(tmp_path):
    printed_config = printed(["fit", "--config", DEMO, "--print_config"])
    config = yaml.safe_load(printed_config)
    assert config["model"]["init_args"]["adapter"]["class_path"] == "lit_lora.adapters.LoRA"
    assert "tokenizer_name_or_path" not in config["data"]["init_args"]  # linked, never repeated
    path = tmp_path / "printed.yaml"
    path.write_text(printed_config)
    assert printed(["fit", "--config", str(path), "--print_config"]) == printed_config


def test_every_key_is_documented_in_help():
    help_text = printed(["fit", "--model.help", "lit_lora.models.CausalLMModule"])
    assert "Hub id" in help_text  # model_name_or_path's docstring reaches the CLI
    adapter_help = printed(["fit", "--model.adapter.help", "lit_lora.adapters.QLoRA"])
    assert "double_quant" in adapter_help and "Quantize the quantization constants" in adapter_help


def test_bad_target_module_fails_before_training(tmp_path):
    status, message = cli_exit(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
                                "--model.init_args.adapter.init_args.target_modules", "[q_proj, v_prj]"])
    assert status == 1 and "'v_prj' matches no module" in message and "v_proj" in message, message
    assert "model.init_args.adapter.init_args.target_modules" in message


def test_a_command_without_checkpoints_refuses_a_ckpt_path_but_reads_a_saved_run_config(tmp_path):
    """A run's saved config.yaml holds fit's ``ckpt_path: null`` and ``weights_only: null``: every command reads
    it. A ``--ckpt_path`` given to a command that loads no checkpoint is an error, not silently ignored."""

    saved = tmp_path / "config.yaml"
    saved.write_text(Path(DEMO).read_text() + "ckpt_path: null\nweights_only: null\n")
    run_cli(["estimate", "--config", str(saved)])
    with pytest.raises(SystemExit, match="does not use --ckpt_path"):
        run_cli(["estimate", "--config", str(saved), "--ckpt_path", str(tmp_path / "last.ckpt")])


def test_the_learning_rate_is_logged_at_every_logged_step(tmp_path):
    """metrics.csv (and so W&B) holds the learning rate: the demo's warm-up rises step by step."""
    run_cli(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
             "--trainer.log_every_n_steps", "1"])
    rows = list(csv.DictReader((version_dir(tmp_path) / "metrics.csv").open()))
    lr = [float(row["lr"]) for row in rows if row.get("lr")]
    assert len(lr) == 4 and lr == sorted(lr) and lr[0] < lr[-1], lr


@pytest.mark.parametrize(("key", "value", "message"), [
    ("adapter.init_args.r", "-3", "r must be a positive integer, got -3"),
    ("adapter.init_args.dropout", "1.5", "dropout must be in [0, 1), got 1.5"),
    ("adapter.init_args.alpha", "0", "alpha must be positive, got 0"),
])
def test_an_adapter_setting_out_of_range_is_one_line_before_anything_loads(key, value, message, tmp_path, caplog):
    """peft refuses such values only after the data are tokenised and the model loaded, with a traceback."""
    status, line = cli_exit(["fit", "--config", DEMO, f"--model.init_args.{key}", value,
                             "--trainer.default_root_dir", str(tmp_path)])
    assert status == 1 and line.startswith("lit-lora: InvalidAdapterSetting: model.init_args.adapter (lora): "
                                           f"{message}"), line
    assert "kept" not in caplog.text  # no data was read


@pytest.mark.parametrize("key, value, message", [
    ("lr", "-1", "lr must be above 0, got -1.0"),
    ("eps", "0", "eps must be above 0, got 0.0"),
    ("weight_decay", "-0.1", "weight_decay must be at least 0, got -0.1"),
    ("warmup_steps", "-5", "warmup_steps must be at least 0, got -5"),
    ("betas", "[0.9, 1.0]", "betas must be two numbers each at least 0 and below 1, got (0.9, 1.0)"),
])
def test_an_optimizer_setting_out_of_range_is_refused_before_anything_loads(key, value, message, tmp_path):
    """torch refused a negative learning rate only when the optimizer was built: after the model loaded, the
    data were tokenised and the baseline evaluated (minutes on a cluster, after the queue)."""
    from lit_lora.commands import input_error_in

    with pytest.raises(Exception) as refused:
        run_cli(["fit", "--config", DEMO, f"--model.init_args.optim.{key}", value,
                 "--trainer.default_root_dir", str(tmp_path)])
    error = input_error_in(refused.value)
    assert type(error).__name__ == "IncompatibleConfig" and str(error) == f"model.init_args.optim.{message}"
    assert not any(tmp_path.iterdir())  # no run directory: nothing was built


@pytest.mark.parametrize("override, named", [
    (["--data.init_args.val_fraction", "1.5"], "data.init_args.val_fraction must be between 0 and 1 (both excluded), got 1.5"),
    (["--data.init_args.sample_fraction", "5"], "data.init_args.sample_fraction must be above 0 and at most 1, got 5"),
    (["--data.init_args.batch_size", "0"], "data.init_args.batch_size must be at least 1, got 0"),
    (["--trainer.accumulate_grad_batches", "0"], "trainer.accumulate_grad_batches must be at least 1, got 0"),
    (["--data.init_args.system_prompt", "Be brief."], "with template 'alpaca' it would be ignored"),
    (["--data", "lit_lora.data.DS1000DataModule", "--data.init_args.template", "alpaca"],
     "data.init_args.template must be one of plain, chat for DS1000DataModule, got 'alpaca'"),
], ids=["val_fraction", "sample_fraction", "batch_size", "accumulate_grad_batches", "system_prompt", "ds1000_template"])
def test_a_data_setting_out_of_range_is_one_line_naming_its_key(tmp_path, override, named, caplog):
    status, line = cli_exit(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL, *override])
    assert status == 1 and line.startswith("lit-lora: ") and named in line, line
    assert "kept" not in caplog.text  # before any data was read


def test_a_value_for_a_key_the_cli_links_is_refused_not_dropped(tmp_path):
    """jsonargparse drops a value given for a link target without a word: the data's trust_remote_code and
    tokenizer follow the model's, so ``--data.init_args.trust_remote_code true`` did nothing."""
    status, line = cli_exit(["fit", "--config", DEMO, "--data.init_args.trust_remote_code", "true",
                             "--trainer.default_root_dir", str(tmp_path), *SMALL])
    assert status == 1 and "--data.init_args.trust_remote_code (command line)" in line, line
    assert "comes from model.init_args.trust_remote_code" in line
    extra = tmp_path / "extra.yaml"
    extra.write_text("data:\n  init_args:\n    max_length: 64\n    tokenizer_name_or_path: /elsewhere\n")
    status, line = cli_exit(["fit", "--config", DEMO, "--config", str(extra), "--trainer.default_root_dir",
                             str(tmp_path), *SMALL])
    assert status == 1 and f"{extra}: line 4: data.init_args.tokenizer_name_or_path" in line, line
    assert not (tmp_path / "lightning_logs").exists()  # refused before anything was built
    both = tmp_path / "both.yaml"  # the model's own trust_remote_code comes first: the data's line is named
    both.write_text("model:\n  init_args:\n    trust_remote_code: false\n"
                    "data:\n  init_args:\n    trust_remote_code: true\n")
    status, line = cli_exit(["fit", "--config", DEMO, "--config", str(both), "--trainer.default_root_dir",
                             str(tmp_path), *SMALL])
    assert status == 1 and line.startswith(f"lit-lora: {both}: line 6: data.init_args.trust_remote_code, which comes "
                                           "from model.init_args.trust_remote_code."), line


def test_validate_keeps_a_verbose_true_it_is_given(tmp_path, capsys):
    """validate / test turn Lightning's results table off (MetricsWriter prints each metric once), unless the
    command line asks for it with Lightning's own --verbose true."""
    run_cli(["validate", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
             "--trainer.limit_val_batches", "1", "--verbose", "true"])
    assert "Validate metric" in capsys.readouterr().out
    run_cli(["validate", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
             "--trainer.limit_val_batches", "1"])
    assert "Validate metric" not in capsys.readouterr().out


def test_the_tuned_figure_is_val_loss_under_mixed_precision(tmp_path):
    """Under bf16-mixed the before/after figure is computed as val_loss is (in the precision plugin's autocast):
    both score the final weights on the same rows, so they agree (they differed by 1e-3 without it)."""
    run_cli(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
             "--trainer.precision", "bf16-mixed", "--trainer.log_every_n_steps", "1"])
    run = version_dir(tmp_path)
    final_val = [row["val_loss"] for row in validation_rows(run) if row["step"] == 3][-1]  # step 4's, logged as 3
    tuned = json.loads((run / "before_after.json").read_text())["tuned_val_loss"]
    assert abs(tuned - final_val) < 1e-5, (tuned, final_val)


@pytest.mark.parametrize("key, value", [("batch_size", "2"), ("seed", "7")])  # the seed draws order and split
def test_a_mid_epoch_resume_with_another_batch_size_or_data_seed_is_one_line(tmp_path, key, value):
    run_cli(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL])
    ckpt = sorted((version_dir(tmp_path) / "checkpoints").glob("*.ckpt"))[-1]  # step 4 of a 9-batch epoch
    status, line = cli_exit(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
                             "--trainer.max_steps", "6", f"--data.init_args.{key}", value, "--ckpt_path", str(ckpt)])
    assert status == 1 and line.startswith("lit-lora: ") and f"resume needs the same data.{key}" in line, line


def test_the_final_step_is_the_latest_checkpoint_when_it_was_no_validation_step(tmp_path, capsys):
    """5 steps, validation every 2: the step-5 weights (the exported adapter) are saved as the latest checkpoint
    too, so the printed test / compare commands score the exported model and resuming from it continues the run."""
    capsys.readouterr()
    run_cli(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL, "--trainer.max_steps", "5"])
    out = capsys.readouterr().out
    run = version_dir(tmp_path)
    (ckpt,) = (run / "checkpoints").glob("*.ckpt")
    assert ckpt.name == "epoch=0-step=5.ckpt" and f"--ckpt_path {ckpt}" in out  # the epoch step 5 ran in
    assert "(validation at step 4)" in out  # the val_loss shown is step 4's, not the final weights'
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 5
    run_cli(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
             "--trainer.max_steps", "6", "--ckpt_path", str(ckpt)])
    resumed = capsys.readouterr().out
    assert "step 6 (1 step after resuming at step 5)" in resumed and not (tmp_path / "lightning_logs" / "version_1").exists()
    config = (run / "config.yaml").read_text()
    status, line = cli_exit(["fit", "--config", DEMO, "--trainer.default_root_dir", str(tmp_path), *SMALL,
                             "--trainer.max_steps", "5", "--ckpt_path", str(ckpt)])
    assert status == 1 and "is at step 5 and trainer.max_steps is 5: nothing left to train" in line, line
    assert (run / "config.yaml").read_text() == config  # refused before anything was written


def test_a_fit_that_stops_before_its_first_step_leaves_no_numbered_run_directory(tmp_path):
    """Refused runs (here: a data file with a broken line) used to leave empty version_N directories, and the
    first good run became version_5."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a" "input": ""}\n')
    root = tmp_path / "runs"
    args = ["fit", "--config", DEMO, "--trainer.default_root_dir", str(root), *SMALL, "--data.init_args.source", bad]
    refused = run_cli_subprocess(args, check=False)
    assert refused.returncode == 1 and "bad.jsonl: line 2" in refused.stderr, refused.stderr[-2000:]
    assert "Failed to load JSON" not in refused.stderr  # datasets' own line, counted from another origin
    status, line = cli_exit(args)  # a second refusal, as the first
    assert status == 1 and "bad.jsonl: line 2" in line, line
    assert not list((root / "lightning_logs").glob("version_*"))
    run_cli(["fit", "--config", DEMO, "--trainer.default_root_dir", str(root), *SMALL, "--trainer.max_steps", "1"])
    assert [p.name for p in (root / "lightning_logs").glob("version_*")] == ["version_0"]
