"""``lit-lora compare --adapter_dir`` refuses a directory it cannot load before the base model is scored (on a real
model that is the whole base evaluation, generation included), in one line naming the directory."""

import json

from harness import cli_exit
from test_seq2seq_compare import data_args, trained  # noqa: F401  (the fixture: a LoRA-tuned tiny T5)


def compare_exit(trained, adapter_dir, out, *extra):  # noqa: F811
    model, _, source = trained
    return cli_exit(["compare", *data_args(model, source), "--adapter_dir", str(adapter_dir), "--out_dir", str(out),
                     "--trainer.accelerator", "cpu", "--trainer.limit_test_batches", "1", *extra])


def test_a_run_directory_given_for_the_adapter_is_refused_before_scoring(trained, tmp_path):  # noqa: F811
    _, run, _ = trained  # the run directory, not its adapter/ folder: neither adapter_config.json nor config.json
    status, line = compare_exit(trained, run, tmp_path / "out")
    assert status == 1 and line.startswith("lit-lora: IncompatibleConfig: --adapter_dir ") and str(run) in line, line
    assert "adapter_config.json" in line and "config.json" in line
    assert not (tmp_path / "out" / "base").exists()  # nothing was scored


def test_a_peft_adapter_for_a_config_without_one_is_refused_before_scoring(trained, tmp_path):  # noqa: F811
    _, run, _ = trained
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["peft_type"] == "LORA"
    status, line = compare_exit(trained, run / "adapter", tmp_path / "out",
                                "--model.init_args.adapter", "lit_lora.adapters.FullFineTuning")
    assert status == 1 and "is a peft adapter" in line and "full" in line, line
    assert not (tmp_path / "out" / "base").exists()
