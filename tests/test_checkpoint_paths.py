"""A ``--ckpt_path`` that holds no checkpoint of the config's module is one line before anything loads: an adapter's
weights file, a checkpoints directory, or the checkpoint of another kind of run (a classifier's under a causal-LM
config: the config's data would meet the checkpoint's model and fail deep inside the loss)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from harness import DEMO, QUIET, cli_exit, config, run_cli

from lit_lora.ckpt_settings import CheckpointSettingsMismatch, check_checkpoint_module

pytestmark = pytest.mark.faults


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_model) -> dict[str, Path]:
    """One-step runs of the demo (LoRA causal LM) and the RoBERTa classifier tutorial: their run directories."""
    root = tmp_path_factory.mktemp("runs")
    common = [*QUIET, "--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"]
    run_cli(["fit", "--config", DEMO, "--trainer.default_root_dir", str(root / "demo"), "--baseline.enabled", "false",
             "--model.init_args.model_name_or_path", tiny_model("llama"), *common])
    run_cli(["fit", "--config", config("tutorials/nli_roberta_lora"), "--trainer.default_root_dir", str(root / "nli"),
             "--model.init_args.model_name_or_path", tiny_model("roberta"), *common])
    return {name: root / name / "lightning_logs" / "version_0" for name in ("demo", "nli")}


def last_line(command: str, ckpt_path: Path, tmp_path: Path, tiny_model, caplog) -> str:
    """The line ``lit-lora <command> --ckpt_path <ckpt_path>`` stops with (``cli_exit``: no traceback)."""
    caplog.clear()
    status, line = cli_exit([command, "--config", DEMO, "--model.init_args.model_name_or_path", tiny_model("llama"),
                             "--trainer.default_root_dir", str(tmp_path), "--ckpt_path", str(ckpt_path)])
    assert status == 1 and "kept" not in caplog.text, "the data was tokenised before the refusal"
    return line


def test_an_adapter_file_or_a_checkpoints_directory_is_named_as_such(runs, tmp_path, tiny_model, caplog):
    weights = runs["demo"] / "adapter" / "adapter_model.safetensors"
    assert last_line("test", weights, tmp_path, tiny_model, caplog) == (
        f"lit-lora: MissingCheckpoint: --ckpt_path {weights}: not a checkpoint Lightning wrote (a .ckpt file in a "
        "run's checkpoints/ directory) (adapter weights: lit-lora compare and merge take the adapter's directory as "
        "--adapter_dir)")
    directory = runs["demo"] / "checkpoints"
    held = sorted(p.name for p in directory.glob("*.ckpt"))
    assert last_line("test", directory, tmp_path, tiny_model, caplog) == (
        f"lit-lora: MissingCheckpoint: --ckpt_path {directory}: a directory, not a checkpoint; it holds "
        f"{', '.join(held)}: name one")


@pytest.mark.parametrize("command", ["test", "compare"])
def test_a_checkpoint_of_another_module_is_refused_with_its_runs_config(runs, tmp_path, tiny_model, command, caplog):
    ckpt = runs["nli"] / "checkpoints" / "last.ckpt"
    prefix = "lit-lora compare: " if command == "compare" else "lit-lora: CheckpointSettingsMismatch: "
    assert last_line(command, ckpt, tmp_path, tiny_model, caplog) == (
        f"{prefix}--ckpt_path {ckpt} holds a lit_lora.models.SequenceClassifierModule, this config a "
        f"lit_lora.models.CausalLMModule: score a checkpoint with the config of its run (lit-lora {command} --config "
        f"{runs['nli'] / 'config.yaml'} --ckpt_path {ckpt})")


@pytest.mark.parametrize("command", ["fit", "test"])
def test_an_empty_or_cut_short_checkpoint_is_one_line_not_a_torch_traceback(runs, tmp_path, tiny_model, command, caplog):
    """LightningCLI ``torch.load``s a ``--ckpt_path`` for its hyperparameters while parsing: a half-copied checkpoint
    (a common cluster mistake) is named before that, as it is by ``compare``."""
    whole = sorted((runs["demo"] / "checkpoints").glob("*.ckpt"))[0]
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(whole.read_bytes()[:100_000])
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    assert last_line(command, cut, tmp_path, tiny_model, caplog) == (
        f"lit-lora: MissingCheckpoint: --ckpt_path {cut}: cut short or damaged, not a whole checkpoint (a save or a "
        "copy that did not finish?)")
    assert last_line(command, empty, tmp_path, tiny_model, caplog) == (
        f"lit-lora: MissingCheckpoint: --ckpt_path {empty}: an empty file, not a whole checkpoint (a save or a copy "
        "that did not finish?)")


def test_compare_refuses_a_checkpoint_of_other_adapter_settings_before_scoring(runs, tmp_path, tiny_model, caplog):
    """compare builds the config's model and loads the checkpoint's weights into it: a LoRA on other layers is named
    with both values before the base is scored; a training-only difference (dropout) is not refused."""
    ckpt = sorted((runs["demo"] / "checkpoints").glob("*.ckpt"))[0]
    caplog.clear()
    status, line = cli_exit(["compare", "--config", str(runs["demo"] / "config.yaml"), "--ckpt_path", str(ckpt),
                             "--model.init_args.adapter.init_args.target_modules", "[q_proj]",
                             "--out_dir", str(tmp_path / "out")])
    assert status == 1 and "kept" not in caplog.text and not (tmp_path / "out").exists()
    assert line.startswith(f"lit-lora compare: --ckpt_path {ckpt} was trained with other adapter settings"), line
    model = {"class_path": "lit_lora.models.CausalLMModule", "init_args": {"adapter": {
        "class_path": "lit_lora.adapters.LoRA", "init_args": {"target_modules": ["q_proj"]}}}}
    with pytest.raises(CheckpointSettingsMismatch, match="target_modules: config \\['q_proj'\\], checkpoint 'all-linear'"):
        check_checkpoint_module(str(ckpt), model, "compare")
    saved = yaml.safe_load((runs["demo"] / "config.yaml").read_text())["model"]
    saved["init_args"]["adapter"]["init_args"]["dropout"] = 0.3
    check_checkpoint_module(str(ckpt), saved, "compare")  # dropout trains only: no refusal


def test_a_checkpoint_of_another_lora_rank_names_both_shapes_not_a_size_mismatch_list(runs, tmp_path):
    """The command line runs with the checkpoint's stored settings; Python's ``Trainer.validate(module,
    ckpt_path=...)`` loads the weights into the module given: a LoRA of another ``r`` was PyTorch's list of size
    mismatches, one per LoRA tensor; now one line with the first weight and both shapes."""
    import lightning

    from lit_lora.commands.experiment import load_experiment
    from lit_lora.models.checkpoint_state import CheckpointWeightsMismatch

    ckpt = sorted((runs["demo"] / "checkpoints").glob("*.ckpt"))[0]
    r = yaml.safe_load((runs["demo"] / "config.yaml").read_text())["model"]["init_args"]["adapter"]["init_args"]["r"]
    experiment = load_experiment(["--config", str(runs["demo"] / "config.yaml"), "--trainer.default_root_dir",
                                  str(tmp_path), "--model.init_args.adapter.init_args.r", str(2 * r)])
    trainer = lightning.Trainer(accelerator="cpu", logger=False, limit_val_batches=1, enable_progress_bar=False,
                                default_root_dir=tmp_path)
    with pytest.raises(CheckpointWeightsMismatch) as info:
        trainer.validate(experiment.module, datamodule=experiment.datamodule, ckpt_path=str(ckpt))
    line = str(info.value)
    assert "\n" not in line and "size mismatch" not in line, line
    assert line.startswith("checkpoint holds ") and "weights in other shapes than this lora model's (first: " \
        "model.base_model.model.model.layers.0." in line, line
    assert f": [{r}, " in line and f"in the checkpoint, [{2 * r}, " in line and "config.yaml of its run" in line, line
