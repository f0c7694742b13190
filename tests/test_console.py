"""The console talks like a tool: no library noise a user cannot act on, a step-based progress bar
for a step-based run, and a closing summary; ``--verbose`` brings the library messages back."""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

from harness import DEMO, output, run_cli_subprocess

NOISE = {
    "tensorboardX": "`tensorboardX` has been removed",  # Lightning's default-logger notice: lit-lora names CSV
    "LitLogger tip": "seamless cloud logging",
    "DeepSpeed accelerator": "Setting accelerator to CPU",
    "bitsandbytes CPU kernel": "Failed to load CPU gemm_4bit_forward",
    "transformers FutureWarning": "`is_gradient_checkpointing` is deprecated",
    "pytree deprecation": "isinstance(treespec, LeafSpec)",
    "model summary": "Total FLOPs",
}


def demo(tmp_path: Path, *extra: str, streams: bool = False):
    """``lit-lora fit`` on the demo config for 2 steps, as a user runs it; stdout and stderr together (or the
    finished process, with ``streams``)."""
    args = ["fit", "--config", DEMO, "--trainer.max_steps", "2",
            "--trainer.val_check_interval", "2", "--data.init_args.max_samples", "20",
            "--data.init_args.batch_size", "4", "--trainer.default_root_dir", str(tmp_path), *extra]
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = run_cli_subprocess(args, cwd=tmp_path, env={"LIT_LORA_VERBOSE": None}, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    return result if streams else output(result)


def test_demo_console_is_quiet_and_step_based(tmp_path):
    result = demo(tmp_path / "quiet", streams=True)
    out = output(result)
    # stdout keeps what a user saves (the figures, the summary); progress bars and log lines go to stderr
    assert "step: " not in result.stdout and "[lit-lora] done: 2 steps" in result.stdout, result.stdout[-2000:]
    assert "it/s]" not in result.stdout and "Validation" not in result.stdout, result.stdout[-2000:]
    assert [name for name, text in NOISE.items() if text in out] == []
    assert "v_num" not in out
    assert re.search(r"step: 100%\|.*\| 2/2 .*train_loss=", out), out[-2000:]
    assert re.search(r"\| 2/2 .*tokens/s=[\d,]+", out), out[-2000:]  # real tokens per second since step 1
    assert "[lit-lora] done: 2 steps" in out and "next: lit-lora test --config" in out
    # stderr is a file here, as in a batch job's log: the bar prints whole lines, not one line rewritten with \r
    bar_lines = [line for line in result.stderr.splitlines() if "step:" in line]
    assert bar_lines and all(line.startswith("step:") and "\r" not in line and len(line) < 300
                             for line in bar_lines), bar_lines
    counts = [re.search(r"\| (\d+)/2 ", line).group(1) for line in bar_lines]
    assert counts == ["1", "2"], bar_lines  # each step once: not the bar's creation at 0, nor 2/2 again at the end
    assert not [line for line in result.stderr.splitlines() if line.startswith("Training:")], result.stderr[-2000:]
    assert "Validation" not in result.stderr and "Sanity Checking" not in result.stderr  # a line a batch

    loud = demo(tmp_path / "verbose", "--verbose")
    shown = [name for name, text in NOISE.items() if text in loud]
    assert {"LitLogger tip", "model summary"} <= set(shown), shown


def test_the_next_commands_it_prints_run_as_printed(tmp_path):
    """The closing summary's ``next:`` commands (``test``, ``compare`` and ``merge`` on the run's saved
    config.yaml, which holds fit's own ``ckpt_path`` / ``weights_only`` keys) run as a user would paste them."""
    out = demo(tmp_path / "run")
    commands = [line.split("#")[0].strip().removeprefix("next:").strip() for line in out.splitlines()
                if line.strip().startswith(("next: lit-lora", "lit-lora compare", "lit-lora merge"))]
    assert [c.split()[1] for c in commands] == ["test", "compare", "merge"], out[-2000:]
    for command in commands:
        args = shlex.split(command)[1:]
        assert "config.yaml" in args[args.index("--config") + 1]  # the run's saved config, overrides included
        result = run_cli_subprocess(args, cwd=tmp_path, env={"LIT_LORA_VERBOSE": None}, check=False)
        assert result.returncode == 0, f"{command}\n{output(result)[-3000:]}"
        if args[0] == "compare":
            compared = result
        if args[0] == "merge":  # its stdout is its one result line (DeepSpeed's CPU notice went there)
            assert result.stdout.strip().startswith("[lit-lora] merged ") and len(result.stdout.strip().splitlines()) \
                == 1, result.stdout
    assert list((tmp_path / "run").rglob("compare/report.md"))
    (adapter,) = (tmp_path / "run").rglob("adapter/adapter_config.json")
    assert_merged_equals_the_adapter(adapter.parent, adapter.parent.parent / "merged")
    result = compared
    # compare says which model each evaluation is, then the headline figures and where the files went
    said = output(result)
    assert "compare 1/2: the base model" in said and "compare 2/2: the fine-tuned model" in said, said[-3000:]
    assert re.search(r"^  loss +[\d.]+ -> [\d.]+ \([+-][\d.]+; lower is better\)$", said, re.M), said[-3000:]
    assert "report.md (and report.json)" in said and "tuned/predictions.jsonl" in said
    assert said.count("GPU available:") <= 1 and "The `srun` command is available" not in said


def assert_merged_equals_the_adapter(adapter_dir: Path, merged_dir: Path) -> None:
    """The merged model computes what base + adapter compute (``lit-lora merge`` wrote ``merged_dir``)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(config["base_model_name_or_path"]),
                                           adapter_dir).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    ids = torch.tensor([[1, 5, 9, 14, 3]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, peft_model(ids).logits, atol=1e-4)


def test_info_lines_come_from_rank_zero_only_and_warnings_from_every_rank(monkeypatch):
    import logging

    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from lit_lora.verbosity import EVERY_RANK, InfoFromRankZero

    def shown(level: int, rank: int, extra: dict = {}) -> bool:
        monkeypatch.setattr(rank_zero_only, "rank", rank)
        record = logging.LogRecord("lit_lora", level, __file__, 1, "message", None, None)
        record.__dict__.update(extra)
        return InfoFromRankZero().filter(record)

    assert shown(logging.INFO, 0) and not shown(logging.INFO, 1)
    assert shown(logging.WARNING, 1) and shown(logging.ERROR, 3)
    assert shown(logging.INFO, 1, EVERY_RANK)  # a line about the rank's own share


def test_perplexity_is_printed_readably_however_large():
    from lit_lora.console import perplexity_text

    assert perplexity_text(0.6) == "1.82" and perplexity_text(7.7053) == "2220.08"
    assert perplexity_text(35.5) == "2.61e+15"  # an untrained T5: not 16 digits


def test_the_summary_suggests_only_what_applies(tmp_path):
    """No checkpoint kept: ``compare`` on the adapter; a merged model is listed and not suggested again;
    no merge hint for a method that has nothing to merge."""
    import time
    from types import SimpleNamespace

    from lit_lora.adapters import FullFineTuning, LoRA
    from lit_lora.console import fit_summary

    (tmp_path / "adapter").mkdir()
    trainer = SimpleNamespace(callback_metrics={}, global_step=3, checkpoint_callback=None)
    lora = SimpleNamespace(adapter=LoRA(), evaluator=SimpleNamespace(compares_generated_text=True))
    summary = fit_summary(trainer, tmp_path, "c.yaml", time.perf_counter(), lora)
    assert f"next: lit-lora compare --config c.yaml --adapter_dir {tmp_path / 'adapter'}" in summary
    assert f"lit-lora merge --config c.yaml --adapter_dir {tmp_path / 'adapter'}" in summary
    assert "lit-lora test" not in summary

    (tmp_path / "merged").mkdir()
    summary = fit_summary(trainer, tmp_path, "c.yaml", time.perf_counter(), lora)
    assert f"merged       {tmp_path / 'merged'}" in summary and "lit-lora merge" not in summary

    full = SimpleNamespace(adapter=FullFineTuning(), evaluator=None)
    (tmp_path / "other" / "adapter").mkdir(parents=True)
    assert "merge" not in fit_summary(trainer, tmp_path / "other", "c.yaml", time.perf_counter(), full)


def test_a_resumed_fit_continues_its_run_directory_and_says_what_it_ran(tmp_path):
    """``fit --ckpt_path <run>/checkpoints/x.ckpt`` continues that run (one metrics.csv, one summary), the closing
    line counts the steps this process ran, and the training time spans both segments."""
    demo(tmp_path, "--trainer.log_every_n_steps", "1")
    run = tmp_path / "lightning_logs" / "version_0"
    ckpt = sorted((run / "checkpoints").glob("*.ckpt"))[-1]
    first_time = json.loads((run / "run_summary.json").read_text())["wall_time_s"]
    out = demo(tmp_path, "--trainer.log_every_n_steps", "1", "--trainer.max_steps", "4", "--ckpt_path", str(ckpt))
    assert not (tmp_path / "lightning_logs" / "version_1").exists(), out[-2000:]
    assert "[lit-lora] done: step 4 (2 steps after resuming at step 2)" in out, out[-2000:]
    assert re.search(r"step: 100%\|.*\| 4/4 ", out) and " 1/4 " not in out, out[-2000:]  # the bar starts at 2
    steps = [int(row["step"]) for row in csv.DictReader((run / "metrics.csv").open()) if row.get("train_loss")]
    assert steps == [0, 1, 2, 3]  # Lightning logs step k under k - 1: both segments, each step once
    summary = json.loads((run / "run_summary.json").read_text())
    assert summary["global_step"] == 4 and summary["resumed_at_step"] == 2
    assert summary["wall_time_s"] > first_time

    # the same resume again: step 2 is no longer the run's latest, so it starts a new run instead of replacing it
    adapter = (run / "adapter" / "adapter_model.safetensors").read_bytes()
    again = demo(tmp_path, "--trainer.log_every_n_steps", "1", "--trainer.max_steps", "4", "--ckpt_path", str(ckpt))
    assert (tmp_path / "lightning_logs" / "version_1" / "run_summary.json").is_file(), again[-2000:]
    assert (run / "adapter" / "adapter_model.safetensors").read_bytes() == adapter
    assert json.loads((run / "run_summary.json").read_text()) == summary


def test_a_multi_node_runs_next_test_command_runs_where_it_is_printed(tmp_path):
    """The run's config.yaml keeps num_nodes: 2, which outside the job would wait for a second node forever."""
    import time
    from types import SimpleNamespace

    from lit_lora.console import fit_summary

    def trainer(num_nodes):
        return SimpleNamespace(callback_metrics={}, callbacks=[], global_step=4, num_nodes=num_nodes,
                               checkpoint_callback=SimpleNamespace(last_model_path="run/last.ckpt", best_model_path=""))

    several = fit_summary(trainer(2), tmp_path, "run/config.yaml", time.perf_counter())
    assert "next: lit-lora test --config run/config.yaml --ckpt_path run/last.ckpt --trainer.num_nodes 1" in several
    one = fit_summary(trainer(1), tmp_path, "run/config.yaml", time.perf_counter())
    assert one.rstrip().endswith("next: lit-lora test --config run/config.yaml --ckpt_path run/last.ckpt"), one


def test_the_libraries_bars_are_off_in_a_job_log():
    """transformers' "Loading weights" and datasets' tokenising bars rewrite one line with \\r: where stderr is a
    file (a batch job's log), lit-lora's console turns them off; lit-lora's own bar prints line by line there."""
    import subprocess
    import sys

    from harness import subprocess_env

    probe = ("from lit_lora.console import quiet_libraries; quiet_libraries()\n"
             "import datasets.utils.logging as d, transformers.utils.logging as t\n"
             "print(t.is_progress_bar_enabled(), d.is_progress_bar_enabled())")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                          env=subprocess_env({"LIT_LORA_VERBOSE": None}))
    assert done.returncode == 0 and done.stdout.split() == ["False", "False"], done.stdout + done.stderr[-2000:]
