"""Every YAML under configs/ parses; every config is a reference experiment or a tutorial; every reference
experiment runs 2 steps, then its evaluation, and every tutorial runs 2 steps.

``configs/`` is walked (``config_problems``): a complete config that is in neither ``REFERENCES`` (a reference
experiment, with its tiny run below) nor ``TUTORIALS`` fails the suite, as does a registered one whose header
does not say how to launch it or repeats its hyperparameters (they stay in the body). Fragments
(``configs/loggers/``, ``configs/strategies/``: ``lit_lora.commands.configs.FRAGMENT_GROUPS``) are parsed only.

In a tiny run only the model (a tiny random model of the same architecture, ``tiny_model``) and, for a reference
experiment, the data (the bundled sample of the same schema) are replaced; every other setting of the config is
used as written. The run-only overrides, the same for every config, are in ``RUN_OVERRIDES``; there is no CPU
override: paged optimizers fall back to ordinary ones on the CPU (bitsandbytes warns), Lightning runs
``16-mixed`` as ``bf16-mixed`` on the CPU (it warns), and QLoRA's 4-bit layers run on the CPU.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from harness import CONFIGS, build_cli, run_cli

from lit_lora.commands.configs import is_fragment


@dataclass(frozen=True)
class Reference:
    arch: str  # lit_lora.tiny architecture of the same family
    sample: str  # bundled sample with the dataset's schema
    # "+"-joined: "baseline" (validation loss base vs tuned, printed by fit), "compare", "test" (lit-lora test
    # writes metrics.json); "incontext" alone: no fit, `lit-lora incontext --shots 0 1`
    evaluation: str
    data: dict = field(default_factory=dict)  # further data keys that name the hub dataset's splits
    chat: bool = False  # an instruction-tuned model: the tiny model gets a chat template like the real one's


# The reference experiments (GPU, real models), by path under configs/: each gets a tiny run below.
REFERENCES = {
    "code/gemma2b_qlora_python_codes.yaml": Reference("gemma", "python_codes_25k.jsonl", "baseline"),
    "code/codet5_base_lora_python_codes.yaml": Reference("t5", "python_codes_25k.jsonl", "compare"),
    "code/phi15_qlora_ds1000.yaml": Reference("phi", "ds1000.jsonl", "compare"),
    "dialogue/falcon7b_qlora_counselling.yaml": Reference("falcon", "counselling.jsonl", "compare"),
    "nli/roberta_large_full_multinli.yaml": Reference("roberta", "multinli_train.jsonl", "test"),
    "nli/roberta_large_lora_multinli.yaml": Reference("roberta", "multinli_train.jsonl", "test"),
    "nli/roberta_large_ptuning_multinli.yaml": Reference("roberta", "multinli_train.jsonl", "test"),
    "nli/llama3_8b_incontext_multinli.yaml": Reference("llama", "multinli_train.jsonl", "incontext", chat=True),
    "nli/llama3_8b_qlora_label_word_multinli.yaml": Reference("llama", "multinli_train.jsonl", "test", chat=True),
    "nli/llama3_8b_qlora_classifier_multinli.yaml": Reference("llama", "multinli_train.jsonl", "test"),
    "nli/phi2_qlora_snli.yaml": Reference("phi", "snli_train.jsonl", "baseline+test"),
}
# The CPU tutorials (their own data: the bundled samples), by path under configs/ -> the lit_lora.tiny
# architecture they run with here (None: the config's own model is already tiny and bundled).
TUTORIALS = {
    "demo.yaml": None,
    "tutorials/codet5_lora.yaml": "t5",
    "tutorials/nli_roberta_lora.yaml": "roberta",
    "tutorials/nli_llama_label_word.yaml": "llama",
}
# A header names what the config is and how to launch it; its hyperparameters are the body's (written twice,
# the two drift apart). What a header must not hold:
NUMBER = r"\d[\d.e+-]*"
HYPERPARAMETER_IN_HEADER = re.compile(
    rf"\b(?:(?:r=|lr |alpha |dropout |batch |grad-accum |warmup |weight decay |temperature |top-[kp] ){NUMBER}"
    rf"|\d+ epochs?\b|\d+ (?:optimizer )?steps\b|max grad norm|\d+% of)", re.IGNORECASE)
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
    from lit_lora.commands.experiment import parse_experiment as parse_config

    # a fragment (strategy, logger …) is read on top of a complete config
    fragment = is_fragment(path.relative_to(CONFIGS).as_posix())
    configs = ["--config", str(CONFIGS / "demo.yaml"), "--config", str(path)] if fragment else ["--config", str(path)]
    cfg = parse_config(configs)
    assert cfg.model.class_path and cfg.data.class_path


def header(path: Path) -> str:
    """The comment lines a config starts with, ``#`` and runs of spaces dropped."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(" ".join(line.lstrip("#").split()))
    return "\n".join(lines)


def experiment_configs(configs_dir: Path) -> list[str]:
    """Every complete config under ``configs_dir`` (fragment folders left out), as its path there."""
    names = (p.relative_to(configs_dir).as_posix() for p in configs_dir.rglob("*.yaml"))
    return sorted(name for name in names if not is_fragment(name))


def config_problems(configs_dir: Path) -> list[str]:
    """What is wrong with the configs under ``configs_dir`` (a ``configs/`` directory); empty when nothing is.

    Every complete config must be registered here, in ``REFERENCES`` (with a tiny run) or ``TUTORIALS``; every
    registered one must exist; each registered header must say how to launch it (``lit-lora fit --config
    configs/<group>/<name>.yaml``, ``lit-lora incontext`` for in-context evaluation, and the ``sbatch`` line of a
    reference experiment) and leave the hyperparameters to the body.
    """
    problems = []
    found = experiment_configs(configs_dir)
    for name in found:
        if name not in REFERENCES and name not in TUTORIALS:
            problems.append(f"configs/{name}: neither a reference experiment (REFERENCES, with a tiny run) nor a "
                            "tutorial (TUTORIALS) in tests/test_reference_configs.py")
    problems += [f"configs/{name}: registered in tests/test_reference_configs.py, not found under {configs_dir}"
                 for name in sorted({*REFERENCES, *TUTORIALS} - set(found))]
    for name in found:
        if name not in REFERENCES and name not in TUTORIALS:
            continue
        text = header(configs_dir / name)
        command = "incontext" if name in REFERENCES and REFERENCES[name].evaluation == "incontext" else "fit"
        launches = [f"lit-lora {command} --config configs/{name}"]
        if name in REFERENCES:
            launches.append("sbatch slurm/" if command == "fit" else "sbatch ")
        problems += [f"configs/{name}: the header does not say {launch!r}" for launch in launches if launch not in text]
        problems += [f"configs/{name}: the header repeats a hyperparameter of the body ({m.group(0)!r})"
                     for m in HYPERPARAMETER_IN_HEADER.finditer(text)]
    return problems


def test_every_config_is_a_reference_experiment_or_a_tutorial():
    problems = config_problems(CONFIGS)
    assert problems == [], "\n".join(problems)
    assert not set(REFERENCES) & set(TUTORIALS)


def test_an_unregistered_or_unlaunchable_config_fails_the_check(tmp_path):
    configs = tmp_path / "configs"
    shutil.copytree(CONFIGS, configs)
    assert config_problems(configs) == []  # the copy passes as the original does
    shutil.copy(configs / "nli" / "roberta_large_lora_multinli.yaml", configs / "nli" / "roberta_large_r4_multinli.yaml")
    (configs / "speech").mkdir()
    shutil.copy(configs / "demo.yaml", configs / "speech" / "whisper_lora.yaml")  # a new group nobody registered
    shutil.copy(configs / "strategies" / "ddp.yaml", configs / "strategies" / "ddp_gloo.yaml")  # a fragment: fine
    assert config_problems(configs) == [
        "configs/nli/roberta_large_r4_multinli.yaml: neither a reference experiment (REFERENCES, with a tiny run) "
        "nor a tutorial (TUTORIALS) in tests/test_reference_configs.py",
        "configs/speech/whisper_lora.yaml: neither a reference experiment (REFERENCES, with a tiny run) "
        "nor a tutorial (TUTORIALS) in tests/test_reference_configs.py"]

    shutil.rmtree(configs)
    shutil.copytree(CONFIGS, configs)
    gemma = configs / "code" / "gemma2b_qlora_python_codes.yaml"
    lines = gemma.read_text().splitlines(keepends=True)
    gemma.write_text("# Gemma-2B, QLoRA r=16, lr 2e-4, on python-codes-25k.\n"
                     + "".join(line for line in lines if not line.startswith("#")))
    (configs / "tutorials" / "nli_roberta_lora.yaml").unlink()
    assert config_problems(configs) == [
        "configs/tutorials/nli_roberta_lora.yaml: registered in tests/test_reference_configs.py, not found under "
        f"{configs}",
        "configs/code/gemma2b_qlora_python_codes.yaml: the header does not say "
        "'lit-lora fit --config configs/code/gemma2b_qlora_python_codes.yaml'",
        "configs/code/gemma2b_qlora_python_codes.yaml: the header does not say 'sbatch slurm/'",
        "configs/code/gemma2b_qlora_python_codes.yaml: the header repeats a hyperparameter of the body ('r=16')",
        "configs/code/gemma2b_qlora_python_codes.yaml: the header repeats a hyperparameter of the body ('lr 2e-4')"]


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_config_runs_two_steps(name, tiny_model, tmp_path):
    arch = TUTORIALS[name]
    model = ["--model.init_args.model_name_or_path", tiny_model(arch)] if arch else []
    cli = build_cli(["fit", "--config", str(CONFIGS / name), *model, "--trainer.default_root_dir", str(tmp_path),
                     *RUN_OVERRIDES, "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                     "--data.init_args.max_samples", "40"])
    assert cli.trainer.global_step == 2
    summary = json.loads((Path(cli.trainer.log_dir) / "run_summary.json").read_text())
    assert summary["global_step"] == 2 and 0 < summary["trainable_params"] < summary["total_params"]


def model_and_data_overrides(ref: Reference, model_dir: str) -> list[str]:
    args = ["--model.init_args.model_name_or_path", model_dir, "--data.init_args.source", ref.sample]
    for key, value in ref.data.items():
        args += [f"--data.init_args.{key}", value]
    return args


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_FAILURES[n], strict=True))
                                  if n in KNOWN_FAILURES else n for n in sorted(REFERENCES)])
def test_reference_config_runs_two_steps_then_its_evaluation(name, tiny_model, tmp_path, capsys):
    ref = REFERENCES[name]
    config = str(CONFIGS / name)
    model_dir = with_chat_template(tiny_model(ref.arch), tmp_path / "model") if ref.chat else tiny_model(ref.arch)
    common = ["--config", config, *model_and_data_overrides(ref, model_dir), "--trainer.default_root_dir", str(tmp_path)]
    if ref.evaluation == "incontext":
        return check_incontext(common, tmp_path / "incontext", chat=ref.chat)
    cli = build_cli(["fit", *common, *RUN_OVERRIDES])
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
        run_cli(["compare", *common, *EVAL_OVERRIDES, "--adapter_dir", str(run_dir / "adapter"), "--out_dir",
                 str(tmp_path / "compare")])
        report = json.loads((tmp_path / "compare" / "report.json").read_text())
        assert report and (tmp_path / "compare" / "report.md").is_file()
    if "test" in steps:
        check_test_metrics(cli.model, common, run_dir / "checkpoints" / "last.ckpt")


def check_test_metrics(module, common: list[str], ckpt: Path) -> None:
    """``lit-lora test`` on the fit's last checkpoint writes every evaluation set's metrics to metrics.json."""
    test = build_cli(["test", *common, *eval_overrides(module), "--trainer.enable_progress_bar", "false",
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
    run_cli(["incontext", *common, "--model.init_args.evaluation.max_new_tokens", "8", "--shots", "0", "1",
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
