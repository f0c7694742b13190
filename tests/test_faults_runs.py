"""Runs that must stop with a clear error (or skip and say so) instead of finishing with garbage.

Driven through the CLI as users run it: ``lit-lora fit --config configs/demo.yaml …`` on a tiny Llama.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml
from harness import DEMO, REPO, KillBeforeStep, Killed, resumable_demo_cli, run_cli, version_dir
from harness import fit as fit_cli
from lightning.pytorch import Callback

pytestmark = pytest.mark.faults

OTHER_MODEL = str(REPO / "lit_lora" / "assets" / "tiny-llama")
SMALL = ["--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false",
         "--trainer.enable_model_summary", "false", "--data.init_args.max_samples", "40",
         "--data.init_args.batch_size", "4", "--baseline.enabled", "false"]


def fit(model: str, root: Path, *extra: str) -> None:
    run_cli(["fit", "--config", DEMO, "--model.init_args.model_name_or_path", model,
             "--trainer.default_root_dir", str(root), *SMALL, *extra])


def strict_json(text: str):
    """``json.loads`` that refuses the NaN / Infinity literals Python's json writes by default."""
    def refuse(name):
        raise ValueError(f"invalid JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def written_json(root: Path) -> dict[Path, object]:
    return {p: strict_json(p.read_text()) for p in root.rglob("*.json")}


def adapter_tensors(root: Path) -> dict[Path, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return {p: load_file(str(p)) for p in root.rglob("adapter_model.safetensors")}


def trainable(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


class Poison(Callback):
    """Test helper, added with ``--trainer.callbacks``: NaN gradients on the given batches, NaN weights after one.

    Records the trainable weights around each batch so the test can tell whether a step was applied.
    """

    def __init__(self, grads_at: Optional[list[int]] = None, weights_after: int = -1):
        self.grads_at = grads_at or []
        self.weights_after = weights_after
        self.before: dict[int, dict] = {}
        self.changed: dict[int, bool] = {}
        self.batch_idx = -1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_idx = batch_idx
        self.before[batch_idx] = trainable(pl_module)

    def on_after_backward(self, trainer, pl_module):
        if self.batch_idx in self.grads_at:
            for p in pl_module.parameters():
                if p.grad is not None:
                    p.grad.fill_(float("nan"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == self.weights_after:
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.requires_grad).fill_(float("nan"))
        after = trainable(pl_module)
        self.changed[batch_idx] = any(not torch.equal(after[n], w) for n, w in self.before[batch_idx].items())


def poison(**init_args) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": f"{__name__}.Poison", "init_args": init_args})


@pytest.fixture
def clis(monkeypatch) -> list:
    """The LitLoraCLI objects ``main`` builds in this test (to look at the trainer and modules they ran)."""
    import lit_lora.commands.train as cli_module

    made = []
    monkeypatch.setattr(cli_module, "LitLoraCLI", type("Recorded", (cli_module.LitLoraCLI,), {
        "after_instantiate_classes": lambda self: made.append(self)}))
    return made


def poisoner(cli_callbacks) -> Poison:
    (found,) = [c for c in cli_callbacks if isinstance(c, Poison)]
    return found


# ---- 1. non-finite loss / gradients ---------------------------------------------------------------------------
def test_a_nan_loss_stops_the_run_naming_the_step_and_exports_nothing(tiny_model, tmp_path):
    with pytest.raises(RuntimeError, match=r"non-finite training loss \(nan\) at global step 1\b") as err:
        fit(tiny_model("llama"), tmp_path, "--trainer.max_steps", "6", "--model.init_args.optim.lr", "1e30")
    assert "last finite loss" in str(err.value) and "global step 0" in str(err.value)
    assert not list(tmp_path.rglob("adapter")), "an adapter was exported from a run that stopped on NaN"
    for path, tensors in adapter_tensors(tmp_path).items():
        assert all(torch.isfinite(t).all() for t in tensors.values()), path
    written_json(tmp_path)  # every JSON file that was written parses strictly


def test_non_finite_weights_are_never_exported(tiny_model, tmp_path):
    """Weights that turn NaN after the last step (no loss sees them) are refused by the checkpoint and the export."""
    with pytest.raises(ValueError, match=r"refusing to write .*non-finite values .*first: model\.") as err:
        fit(tiny_model("llama"), tmp_path, "--trainer.max_steps", "2", poison(weights_after=1))
    assert "trainable weight tensor(s)" in str(err.value)
    assert not adapter_tensors(tmp_path) and not list(tmp_path.rglob("*.ckpt"))
    written_json(tmp_path)


def test_no_save_path_writes_non_finite_weights(tiny_model, tmp_path, clis):
    """A preemption save calls ``trainer.save_checkpoint`` itself, outside AdapterCheckpoint's check:
    the always-on finite guard refuses it too."""
    fit(tiny_model("llama"), tmp_path, "--trainer.max_steps", "1")
    trainer = clis[0].trainer
    trainer.save_checkpoint(tmp_path / "fine.ckpt")
    weight = next(p for p in trainer.lightning_module.parameters() if p.requires_grad)
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to write a checkpoint at global step 1: 1 trainable weight"):
        trainer.save_checkpoint(tmp_path / "nan.ckpt")
    assert (tmp_path / "fine.ckpt").is_file() and not (tmp_path / "nan.ckpt").exists()


def test_bad_batches_are_skipped_up_to_the_limit_and_logged(tiny_model, tmp_path, caplog, clis):
    caplog.set_level(logging.WARNING, logger="lit_lora")
    fit(tiny_model("llama"), tmp_path, "--trainer.max_steps", "5", "--finite_guard.max_skipped_batches", "2",
        poison(grads_at=[1, 3]))
    skips = [r.getMessage() for r in caplog.records if "skipped the optimizer step" in r.getMessage()]
    assert len(skips) == 2, skips
    assert "batch 1" in skips[0] and "1 of 2" in skips[0] and "2 of 2" in skips[1]
    grads = poisoner(clis[0].trainer.callbacks)
    assert grads.changed == {0: True, 1: False, 2: True, 3: False, 4: True}  # skipped steps leave the weights alone
    assert (version_dir(tmp_path) / "adapter" / "adapter_model.safetensors").is_file()
    for path, tensors in adapter_tensors(tmp_path).items():
        assert all(torch.isfinite(t).all() for t in tensors.values()), path
    written_json(tmp_path)

    # one bad batch more than allowed: the run stops at it
    with pytest.raises(RuntimeError, match=r"non-finite gradients at global step 3 .*1 bad batch already skipped"):
        fit(tiny_model("llama"), tmp_path / "over", "--trainer.max_steps", "5",
            "--finite_guard.max_skipped_batches", "1", poison(grads_at=[1, 3]))


def test_a_validation_loss_that_is_not_finite_stops_the_run_and_exports_nothing(tiny_model, tmp_path):
    """float16 weights and lr 1.0: the weights stay finite, the outputs overflow. Before, the run printed
    "tuned nan", exited 0 and exported the adapter."""
    float16 = ["--model.init_args.dtype", "float16", "--model.init_args.optim.lr", "1.0", "--trainer.max_steps", "3",
               "--trainer.val_check_interval", "3"]  # the training loss of steps 1-3 is still finite
    with pytest.raises(RuntimeError, match=r"non-finite validation loss \(val_loss nan\) at global step \d+: .*"
                                           r"float16 overflows"):
        fit(tiny_model("llama"), tmp_path / "during", *float16)
    assert not list((tmp_path / "during").rglob("adapter"))

    # no validation during the fit: the closing base-vs-tuned figure finds it, and the run fails
    with pytest.raises(RuntimeError, match=r"non-finite validation loss of the tuned model \(nan\) after training: "
                                           r"the adapter exported to .* do not use it"):
        fit(tiny_model("llama"), tmp_path / "after", *float16, "--trainer.limit_val_batches", "0", "--baseline.enabled", "true", "--baseline.limit_batches", "2")
    written_json(tmp_path / "after")


def test_every_json_lit_lora_writes_is_valid_even_with_nan(tmp_path, monkeypatch):
    """A NaN validation loss is written as null in before_after.json, and NaN metrics as null in report.json."""
    from types import SimpleNamespace

    from lit_lora import callbacks
    from lit_lora.evaluation.report import build_report, write_report

    monkeypatch.setattr(callbacks, "mean_validation_loss", lambda *a: float("nan"))
    trainer = SimpleNamespace(log_dir=str(tmp_path), default_root_dir=str(tmp_path), loggers=[], global_step=3,
                              is_global_zero=True, precision="32-true")
    baseline = callbacks.BaselineComparison()
    baseline.base_loss = float("inf")
    with pytest.raises(RuntimeError, match="non-finite validation loss of the tuned model"):  # written, then failed
        baseline.on_train_end(trainer, SimpleNamespace(is_peft=False))  # a full fine-tune: base scored before fit
    assert strict_json((tmp_path / "before_after.json").read_text()) == {"base_val_loss": None,
                                                                         "tuned_val_loss": None}

    nan = {"metrics": {"loss": float("nan"), "bleu": 0.5}, "per_group": {}}
    examples = {"right_if": "exact", "fixed_count": 0, "broken_count": 0, "fixed": [], "broken": []}
    report = build_report(nan, nan, {"perplexity": float("inf")}, None, examples, {"temperature": float("nan")})
    md, js = write_report(report, tmp_path / "compare")
    table = md.read_text()
    assert "| loss | nan | nan | nan | lower |" in table and "| bleu | 0.5000 | 0.5000 | +0.0000 | higher |" in table
    parsed = strict_json(js.read_text())
    assert parsed["metrics"]["loss"] == {"base": None, "tuned": None, "delta": None}
    assert parsed["metrics"]["bleu"]["base"] == 0.5


# ---- 2. --ckpt_path with other model settings ------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """A finished 2-step run: (model path, run dir, its checkpoint)."""
    model = tiny_model("llama")
    root = tmp_path_factory.mktemp("trained")
    fit(model, root, "--trainer.max_steps", "2")
    run_dir = root / "lightning_logs" / "version_0"
    (ckpt,) = (run_dir / "checkpoints").glob("*.ckpt")
    return model, run_dir, ckpt


def test_ckpt_path_with_other_model_settings_fails_listing_each_key(trained, tmp_path):
    model, _, ckpt = trained
    with pytest.raises(ValueError) as err:
        fit(OTHER_MODEL, tmp_path, "--trainer.max_steps", "4", "--data.init_args.max_eval_samples", "3",
            "--model.init_args.adapter.init_args.r", "4", "--model.init_args.optim.lr", "1e-9",
            "--ckpt_path", str(ckpt))
    message = str(err.value)
    assert f"model.init_args.model_name_or_path: config {OTHER_MODEL!r}, checkpoint {model!r}" in message
    assert "model.init_args.adapter.init_args.r: config 4, checkpoint 16" in message
    assert "model.init_args.optim.lr: config 1e-09, checkpoint 0.003" in message
    assert "--resume_with_checkpoint_settings" in message and str(ckpt) in message
    assert "max_steps" not in message and "max_eval_samples" not in message  # trainer / data may change on resume
    assert not (tmp_path / "lightning_logs").exists()  # stopped before training


def test_resume_with_checkpoint_settings_runs_and_records_what_ran(trained, tmp_path, caplog, clis):
    model, _, ckpt = trained
    caplog.set_level(logging.WARNING, logger="lit_lora")
    fit(OTHER_MODEL, tmp_path, "--trainer.max_steps", "3", "--model.init_args.adapter.init_args.r", "4",
        "--model.init_args.optim.lr", "1e-9", "--ckpt_path", str(ckpt), "--resume_with_checkpoint_settings", "true")
    said = caplog.text
    assert clis[0].datamodule.tokenizer.name_or_path == model  # the linked tokenizer follows the checkpoint too
    assert "model.init_args.adapter.init_args.r: config 4, checkpoint 16" in said
    run = version_dir(tmp_path)
    ran = yaml.safe_load((run / "config.yaml").read_text())
    init = ran["model"]["init_args"]
    assert init["model_name_or_path"] == model and init["adapter"]["init_args"]["r"] == 16
    assert init["optim"]["lr"] == 0.003 and ran["resume_with_checkpoint_settings"] is True
    summary = strict_json((run / "run_summary.json").read_text())
    assert summary["model_name_or_path"] == model and summary["global_step"] == 3


def test_ckpt_path_keeps_the_configs_run_settings_and_lists_those_that_differ(trained, tmp_path, caplog, clis):
    """LightningCLI fills the model section from the checkpoint; how to run (dtype, memory switches,
    evaluation) stays what the config says, and every such key that differs is logged."""
    model, _, ckpt = trained
    caplog.set_level(logging.WARNING, logger="lit_lora")
    fit(model, tmp_path, "--trainer.max_steps", "3", "--model.init_args.dtype", "bfloat16",
        "--model.init_args.label_only_loss", "false", "--model.init_args.evaluation.max_new_tokens", "3",
        "--ckpt_path", str(ckpt))
    said = caplog.text
    assert "model.init_args.dtype: config 'bfloat16', checkpoint 'auto'" in said
    assert "model.init_args.label_only_loss: config False, checkpoint True" in said
    assert "model.init_args.evaluation.max_new_tokens: config 3, checkpoint " in said
    assert "model_name_or_path" not in said and "adapter" not in said  # the same as the checkpoint's
    module = clis[0].model
    assert module.dtype_name == "bfloat16" and module.label_only_loss is False
    init = yaml.safe_load((version_dir(tmp_path) / "config.yaml").read_text())["model"]["init_args"]
    assert init["dtype"] == "bfloat16" and init["label_only_loss"] is False
    assert init["evaluation"]["max_new_tokens"] == 3


def test_qloras_checkpointing_switch_is_a_run_setting_on_resume():
    """QLoRA's ``gradient_checkpointing`` (the default of the module's switch) says how to run, not what was
    trained: a resume neither refuses it nor swaps in the checkpoint's; it is kept and listed like the module's."""
    from jsonargparse import Namespace

    from lit_lora.ckpt_settings import differences, keep_run_settings

    def model(checkpointing: bool, r: int = 16) -> Namespace:
        adapter = Namespace(class_path="lit_lora.adapters.QLoRA",
                            init_args=Namespace(r=r, gradient_checkpointing=checkpointing))
        return Namespace(class_path="lit_lora.models.CausalLMModule",
                         init_args=Namespace(model_name_or_path="m", gradient_checkpointing=None, adapter=adapter))

    given, from_checkpoint = model(False), model(True)
    assert differences(given, from_checkpoint) == {}
    assert differences(model(False, r=4), from_checkpoint) == {"model.init_args.adapter.init_args.r": (4, 16)}
    kept = keep_run_settings(given, from_checkpoint, "last.ckpt")
    assert kept == {"model.init_args.adapter.init_args.gradient_checkpointing": (False, True)}
    assert from_checkpoint.init_args.adapter.init_args.gradient_checkpointing is False


# ---- 3. strict adapter loads -----------------------------------------------------------------------------------
def damaged_adapter(run_dir: Path, out: Path, keep: float = 0.25, extra: bool = False,
                    nan: bool = False) -> tuple[Path, list[str], int]:
    """A copy of the run's adapter whose safetensors file keeps only a ``keep`` share of its tensors
    (+ a stray one; NaN in the first one).

    Returns the copy, the names left out and how many tensors the adapter has.
    """
    from safetensors.torch import load_file, save_file

    shutil.copytree(run_dir / "adapter", out)
    tensors = load_file(str(out / "adapter_model.safetensors"))
    names = sorted(tensors)
    keep = int(len(names) * keep)
    kept = {n: tensors[n] for n in names[:keep]}
    if nan:
        kept[names[0]] = torch.full_like(tensors[names[0]], float("nan"))
    if extra:
        kept["base_model.model.model.layers.9.self_attn.q_proj.lora_A.weight"] = tensors[names[0]].clone()
    save_file(kept, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    return out, names[keep:], len(names)


def test_merge_refuses_an_adapter_with_missing_unexpected_or_nan_tensors(trained, tmp_path):
    from transformers import AutoModelForCausalLM

    from lit_lora.export import merge_and_save

    model, run_dir, _ = trained
    adapter, missing, total = damaged_adapter(run_dir, tmp_path / "missing")
    with pytest.raises(ValueError, match=rf"{len(missing)} of {total} adapter tensors missing") as err:
        merge_and_save(model, adapter, tmp_path / "merged", AutoModelForCausalLM)
    assert missing[0] in str(err.value)
    assert not (tmp_path / "merged").exists()

    adapter, _, _ = damaged_adapter(run_dir, tmp_path / "stray", keep=1.0, extra=True)
    with pytest.raises(ValueError, match=r"1 unexpected .*layers\.9\.self_attn\.q_proj\.lora_A"):
        merge_and_save(model, adapter, tmp_path / "merged", AutoModelForCausalLM)

    adapter, _, _ = damaged_adapter(run_dir, tmp_path / "nan", keep=1.0, nan=True)
    with pytest.raises(ValueError, match=r"refusing to write a merged model .*non-finite values"):
        merge_and_save(model, adapter, tmp_path / "merged", AutoModelForCausalLM)
    assert not (tmp_path / "merged").exists()


def test_compare_refuses_an_adapter_dir_with_missing_tensors(trained, tmp_path):
    model, run_dir, _ = trained
    adapter, missing, total = damaged_adapter(run_dir, tmp_path / "adapter")
    with pytest.raises(ValueError, match=rf"{len(missing)} of {total} adapter tensors missing") as err:
        run_cli(["compare", "--config", DEMO, "--model.init_args.model_name_or_path", model,
                 "--adapter_dir", str(adapter), "--out_dir", str(tmp_path / "compare"),
                 "--data.init_args.max_samples", "40", "--data.init_args.max_eval_samples", "2",
                 "--model.init_args.evaluation.max_new_tokens", "2"])
    assert missing[0] in str(err.value)
    assert not (tmp_path / "compare" / "report.json").exists()


def test_an_error_inside_the_first_step_is_the_error_raised_and_its_logged_rows_are_kept(tiny_model, tmp_path):
    """The learning rate of step 1 is logged when the step starts: a run stopped inside that step has logged
    something, so its directory stays for the CSV logger Lightning finalizes after the error (no
    FileNotFoundError hiding the error that stopped the run)."""
    cli = resumable_demo_cli(tiny_model("llama"), tmp_path, 5, 8, "--data.init_args.batch_size", "4")
    cli.trainer.callbacks.append(KillBeforeStep(0))
    with pytest.raises(Killed):
        fit_cli(cli)
    assert (Path(cli.trainer.log_dir) / "metrics.csv").read_text().startswith("lr,step\n")
