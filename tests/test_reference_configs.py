"""Every YAML under configs/ parses; every reference experiment runs 2 steps, then its evaluation.

Only the model (a tiny random model of the same architecture, ``tiny_model``) and the data (the bundled
sample of the same schema) are replaced; every other setting of the config is used as written. The
run-only overrides, the same for every config, are in ``RUN_OVERRIDES``; there is no CPU override:
paged optimizers fall back to ordinary ones on the CPU (bitsandbytes warns), Lightning runs ``16-mixed``
as ``bf16-mixed`` on the CPU (it warns), and QLoRA's 4-bit layers run on the CPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass(frozen=True)
class Reference:
    arch: str  # lit_lora.tiny architecture of the same family
    sample: str  # bundled sample with the dataset's schema
    # "+"-joined: "baseline" (validation loss base vs tuned, printed by fit), "compare", "test" (lit-lora test
    # writes metrics.json); "incontext" alone: no fit, `lit-lora incontext --shots 0 1`
    evaluation: str
    data: dict = field(default_factory=dict)  # further data keys that name the hub dataset's splits
    chat: bool = False  # an instruction-tuned model: the tiny model gets a chat template like the real one's


REFERENCES = {
    "gemma2b_qlora_python_codes.yaml": Reference("gemma", "python_codes_25k.jsonl", "baseline"),
    "codet5_base_lora_python_codes.yaml": Reference("t5", "python_codes_25k.jsonl", "compare"),
    "phi15_qlora_ds1000.yaml": Reference("phi", "ds1000.jsonl", "compare"),
    "falcon7b_qlora_counselling.yaml": Reference("falcon", "counselling.jsonl", "compare"),
    "roberta_large_full_multinli.yaml": Reference("roberta", "multinli_train.jsonl", "test"),
    "roberta_large_lora_multinli.yaml": Reference("roberta", "multinli_train.jsonl", "test"),
    "roberta_large_ptuning_multinli.yaml": Reference("roberta", "multinli_train.jsonl", "test"),
    "llama3_8b_incontext_multinli.yaml": Reference("llama", "multinli_train.jsonl", "incontext", chat=True),
    "llama3_8b_qlora_label_word_multinli.yaml": Reference("llama", "multinli_train.jsonl", "test", chat=True),
    "llama3_8b_qlora_classifier_multinli.yaml": Reference("llama", "multinli_train.jsonl", "test"),
    "phi2_qlora_snli.yaml": Reference("phi", "snli_train.jsonl", "baseline+test"),
}
KNOWN_FAILURES: dict[str, str] = {}  # config -> reason; strict xfail, so a fix turns it red

# Run-only settings: 2 optimizer steps, a temporary run directory, no progress bars, and 4 evaluated rows per
# evaluation set (the sanity check and the base / tuned validation loss go through the same code on 4 rows as
# on 120, in a fraction of the time: label-word validation generates through 4-bit CPU matmuls).
RUN_OVERRIDES = ["--trainer.max_steps", "2", "--trainer.enable_progress_bar", "false",
                 "--data.init_args.max_eval_samples", "4"]
# Evaluation-only: a random tiny model never emits EOS, so every answer runs to max_new_tokens (slow through
# 4-bit CPU matmuls); 4 evaluated rows of 8 new tokens exercise the same generation and report path.
EVAL_OVERRIDES = ["--data.init_args.max_eval_samples", "4", "--model.init_args.evaluation.max_new_tokens", "8"]
# A Llama-3-style chat template (system / user / assistant headers) for the tiny model of an Instruct model.
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


def eval_overrides(module) -> list[str]:
    """``EVAL_OVERRIDES`` that apply to ``module`` (a classifier generates nothing)."""
    return EVAL_OVERRIDES if hasattr(module, "evaluation") else EVAL_OVERRIDES[:2]


def with_chat_template(model_dir: str, out: Path) -> str:
    import shutil

    from transformers import AutoTokenizer

    shutil.copytree(model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return str(out)


def yaml_files() -> list[Path]:
    return sorted(CONFIGS.rglob("*.yaml"))


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_config_parses_with_the_cli_parser(path):
    from lit_lora.estimate import parse_config

    # a fragment in a subfolder (strategy, logger …) is read on top of a complete config
    configs = ["--config", str(path)] if path.parent == CONFIGS else ["--config", str(CONFIGS / "demo.yaml"),
                                                                     "--config", str(path)]
    cfg = parse_config(configs)
    assert cfg.model.class_path and cfg.data.class_path


def test_every_reference_config_has_a_tiny_run():
    tops = {p.name for p in CONFIGS.glob("*.yaml")}
    assert set(REFERENCES) <= tops
    for name, ref in REFERENCES.items():
        header = (CONFIGS / name).read_text().split("\nseed_everything")[0]
        if ref.evaluation == "incontext":
            assert "lit-lora incontext --config configs/" + name in header and "sbatch " in header, name
        else:
            assert "lit-lora fit --config configs/" + name in header and "sbatch slurm/" in header, name


def model_and_data_overrides(ref: Reference, model_dir: str) -> list[str]:
    args = ["--model.init_args.model_name_or_path", model_dir, "--data.init_args.source", ref.sample]
    for key, value in ref.data.items():
        args += [f"--data.init_args.{key}", value]
    return args


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[n], strict=True))
                                  if n in KNOWN_FAILURES else n for n in sorted(REFERENCES)])
def test_reference_config_runs_two_steps_then_its_evaluation(name, tiny_model, tmp_path, capsys):
    from lit_lora.cli import LitLoraCLI, main

    ref = REFERENCES[name]
    config = str(CONFIGS / name)
    model_dir = with_chat_template(tiny_model(ref.arch), tmp_path / "model") if ref.chat else tiny_model(ref.arch)
    common = ["--config", config, *model_and_data_overrides(ref, model_dir), "--trainer.default_root_dir", str(tmp_path)]
    if ref.evaluation == "incontext":
        return check_incontext(common, tmp_path / "incontext", chat=ref.chat)
    cli = LitLoraCLI(args=["fit", *common, *RUN_OVERRIDES])
    assert cli.trainer.global_step == 2
    adapter = cli.model.adapter
    if getattr(adapter, "bits", None) == 4:  # QLoRA must really train over a 4-bit base
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in cli.model.model.modules()), \
            f"{name}: no 4-bit layer in {type(cli.model.model.get_base_model()).__name__}"
    run_dir = Path(cli.trainer.log_dir)
    summary = json.loads((run_dir / "run_summary.json").read_text())
    assert summary["global_step"] == 2 and 0 < summary["trainable_params"] <= summary["total_params"]
    assert (summary["trainable_params"] == summary["total_params"]) == (adapter.method == "full")

    steps = ref.evaluation.split("+")
    if "baseline" in steps:
        result = json.loads((run_dir / "before_after.json").read_text())
        assert result["base_val_loss"] > 0 and result["tuned_val_loss"] > 0
        assert "validation loss: base" in capsys.readouterr().out
    if "compare" in steps:
        main(["compare", *common, *EVAL_OVERRIDES, "--adapter_dir", str(run_dir / "adapter"), "--out_dir", str(tmp_path / "compare")])
        report = json.loads((tmp_path / "compare" / "report.json").read_text())
        assert report and (tmp_path / "compare" / "report.md").is_file()
    if "test" in steps:
        check_test_metrics(cli.model, common, run_dir / "checkpoints" / "last.ckpt")


def check_test_metrics(module, common: list[str], ckpt: Path) -> None:
    """``lit-lora test`` on the fit's last checkpoint writes every evaluation set's metrics to metrics.json."""
    from lit_lora.cli import LitLoraCLI

    test = LitLoraCLI(args=["test", *common, *eval_overrides(module), "--trainer.enable_progress_bar", "false",
                            "--ckpt_path", str(ckpt)])
    written = json.loads((Path(test.trainer.log_dir) / "metrics.json").read_text())
    assert written["stage"] == "test" and written["ckpt_path"] == str(ckpt)
    sets = test.datamodule.eval_names
    accuracies = {k: v for k, v in written["metrics"].items() if k.endswith("/accuracy")}
    assert sets and len(accuracies) >= len(sets) and all(0.0 <= v <= 1.0 for v in accuracies.values())
    for name in sets:
        details = written["details"]["test" if len(sets) == 1 else f"test_{name}"] if not hasattr(module, "evaluation") \
            else written["details"][("test" if len(sets) == 1 else f"test_{name}") + "/likelihood"]
        assert details["n"] == len(test.datamodule.datasets[name]) == 4  # max_eval_samples


def check_incontext(common: list[str], out_dir: Path, chat: bool) -> None:
    """Zero- and one-shot on the first evaluation set: scores per shot count, prompts with the demonstration."""
    from lit_lora.cli import main

    main(["incontext", *common, "--model.init_args.evaluation.max_new_tokens", "8", "--shots", "0", "1",
          "--max_rows", "4", "--out_dir", str(out_dir)])
    results = json.loads((out_dir / "incontext.json").read_text())
    assert set(results) == {"0-shot", "1-shot"}
    for scores in results.values():
        assert 0.0 <= scores["accuracy"] <= 1.0 and 0 <= scores["unparseable"] <= 4
    zero, one = ([json.loads(line) for line in (out_dir / f"predictions_{k}shot.jsonl").read_text().splitlines()]
                 for k in (0, 1))
    assert len(zero) == len(one) == 4 and all(len(r["demos"]) == 1 for r in one)
    turns = "<|assistant|>" if chat else "Answer with one word"
    assert all(r["prompt"].count(turns) == 1 for r in zero) and all(r["prompt"].count(turns) == 2 for r in one)
