"""A secret given on the command line stays out of the W&B run: wandb records the command line with the run
(its metadata's ``args``), beside the config that lit-lora redacts."""

import sys
import time

import pytest

from lit_lora.cluster.tracking import REDACTED, WandbRun, redact_argv


def test_secret_options_are_redacted_and_others_kept():
    argv = ["fit", "--config", "a.yaml", "--model.init_args.hf_token", "hf_abc", "--data.init_args.api_key=k1",
            "--model.init_args.tokenizer_name_or_path", "tok", "--model.init_args.max_new_tokens", "4"]
    assert redact_argv(argv) == ["fit", "--config", "a.yaml", "--model.init_args.hf_token", REDACTED,
                                 f"--data.init_args.api_key={REDACTED}", "--model.init_args.tokenizer_name_or_path",
                                 "tok", "--model.init_args.max_new_tokens", "4"]


def test_a_secret_option_on_the_command_line_never_reaches_the_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
    argv = ["lit-lora", "fit", "--config", "exp.yaml", "--trainer.callbacks.init_args.hf_token", "hf_SECRET_1",
            "--trainer.callbacks.init_args.db_password=SECRET_2"]
    monkeypatch.setattr(sys, "argv", argv)
    logger = WandbRun(save_dir=str(tmp_path))
    logger.log_hyperparams({"callback": {"hf_token": "hf_SECRET_1", "db_password": "SECRET_2"}})
    run_id = logger.experiment.id
    logger.experiment.finish()
    assert sys.argv == argv  # the command line itself is left as it was

    (file,) = tmp_path.glob(f"wandb/offline-run-*-{run_id}/run-{run_id}.wandb")
    for _ in range(100):  # wandb's service writes the file asynchronously after finish()
        if b"exp.yaml" in file.read_bytes():  # the recorded command line is in
            break
        time.sleep(0.1)
    assert b"--trainer.callbacks.init_args.hf_token" in file.read_bytes()
    leaked = [str(p.relative_to(tmp_path)) for p in (tmp_path / "wandb").rglob("*")
              if p.is_file() and (b"SECRET_1" in p.read_bytes() or b"SECRET_2" in p.read_bytes())]
    assert leaked == []


@pytest.fixture(autouse=True)
def _no_inherited_service(monkeypatch):
    monkeypatch.delenv("WANDB_SERVICE", raising=False)
