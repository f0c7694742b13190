"""W&B: secrets redacted, the run id kept in the run directory, read back from wandb's own offline run files."""

import re
import struct
import time
from pathlib import Path

import pytest

from lit_lora.cluster.tracking import REDACTED, WandbRun, redact


def test_redaction_keeps_ordinary_keys():
    params = {"hf_token": "hf_abc", "model": {"api_key": "k", "tokenizer_name_or_path": "p", "pad_token_id": 0},
              "db_password": "pw", "clientSecret": "s", "max_new_tokens": 4, "lr": 1e-3}
    out = redact(params)
    assert out["hf_token"] == out["model"]["api_key"] == out["db_password"] == out["clientSecret"] == REDACTED
    assert out["model"]["tokenizer_name_or_path"] == "p" and out["model"]["pad_token_id"] == 0
    assert out["max_new_tokens"] == 4 and params["hf_token"] == "hf_abc"


@pytest.fixture(autouse=True)
def own_wandb_service(monkeypatch):
    """wandb records its service's socket in ``os.environ`` (``WANDB_SERVICE``): an in-process test's service,
    finished, would otherwise be inherited by the next test's ``lit-lora`` subprocess, whose run then logs nothing."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)


def records(path):
    """Protobuf records of a ``run-<id>.wandb`` file (LevelDB-style log: 7-byte header, 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # full / last chunk
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
        if kind == 0 and length == 0:
            break
    return out


def test_offline_run_logs_redacted_config_and_reuses_its_id(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbRun(save_dir=str(tmp_path), name="t", group="g", tags=["a"])
    logger.log_hyperparams({"hf_token": "hf_secret", "lr": 0.5, "params/trainable_params": 8192})
    assert "anonymous setting" not in capsys.readouterr().err  # no wandb warning a user cannot act on
    logger.log_metrics({"tuned/val_loss": 1.25}, step=3)
    run_id = logger.experiment.id
    logger.experiment.finish()
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    assert WandbRun(save_dir=str(tmp_path)).version == run_id  # a requeued job continues this run

    files = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))
    assert len(files) == 1
    for _ in range(100):  # wandb's service flushes the file asynchronously after finish()
        found = records(files[0])
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            break
        time.sleep(0.1)
    text = "\n".join(str(r) for r in found)
    assert "hf_secret" not in text and REDACTED in text
    assert "trainable_params" in text and "tuned/val_loss" in text and 'group: "g"' in text


def test_after_the_cli_config_only_lightnings_flat_copy_of_it_is_left_out(tmp_path, monkeypatch):
    from jsonargparse import Namespace

    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbRun(save_dir=str(tmp_path))
    logger.log_config(Namespace(model=Namespace(class_path="M", init_args=Namespace(lr=0.5)),
                                data=Namespace(class_path="D", init_args=Namespace(seed=3))))
    logger.log_hyperparams({"lr": 0.5, "seed": 3, "tokenizer_name_or_path": "m", "_instantiator": "x"})  # Lightning's
    logger.log_hyperparams({"my_callback_setting": 7})  # anyone else's: kept
    run_id = logger.experiment.id
    logger.experiment.finish()
    keys = config_keys(tmp_path)
    assert "config" in keys and "my_callback_setting" in keys and not {"lr", "seed", "_instantiator"} & set(keys)
    assert WandbRun.stored_run_id(str(tmp_path)) == run_id


def test_a_held_run_starts_nothing_until_released_then_logs_what_waited(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    logger = WandbRun(save_dir=str(tmp_path), name="t")
    logger.hold()
    logger.log_hyperparams({"lr": 0.5, "api_key": "k-secret"})
    logger.log_metrics({"train_loss": 2.0}, step=1)
    assert logger.experiment is None  # Lightning's early trigger: no run yet
    assert not (tmp_path / "wandb").exists() and not (tmp_path / "wandb_run_id").exists()

    logger.release()
    run_id = logger.experiment.id
    logger.experiment.finish()
    assert (tmp_path / "wandb_run_id").read_text().strip() == run_id
    (file,) = (tmp_path / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    for _ in range(100):  # wandb's service flushes the file asynchronously after finish()
        found = records(file)
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            break
        time.sleep(0.1)
    text = "\n".join(str(r) for r in found)
    assert "train_loss" in text and "k-secret" not in text and REDACTED in text


def test_a_refused_fresh_run_leaves_no_wandb_run_behind(tmp_path):
    """The second fresh ``fit`` into a W&B run's directory is refused before W&B starts a run of its own."""
    from harness import DEMO, QUIET, run_cli_subprocess

    args = ["fit", "--config", DEMO, "--config", str(Path(DEMO).parent / "loggers" / "wandb.yaml"), *QUIET,
            "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "1",
            "--trainer.val_check_interval", "1", "--data.init_args.max_samples", "8", "--data.init_args.batch_size", "4"]
    run_cli_subprocess(args, cwd=tmp_path)
    first = sorted(p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(first) == 1
    refused = run_cli_subprocess(args, cwd=tmp_path, check=False)
    assert refused.returncode == 1 and "RunDirectoryConflict" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "run" / "wandb").glob("offline-run-*")) == first


def config_keys(run_dir: Path) -> list[str]:
    """The config keys of the one offline W&B run in ``run_dir``, once its file is complete."""
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    for _ in range(100):
        found = records(path)
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            break
        time.sleep(0.1)
    return [item.key for r in found if r.WhichOneof("record_type") == "config" for item in r.config.update]


def test_a_fits_wandb_config_is_the_cli_config_once(tmp_path):
    """The run's config is the full CLI config under ``config`` and the parameter counts; Lightning's flat copy of
    the module's and datamodule's arguments (a data ``seed`` beside ``seed_everything``, its ``_instantiator``)
    is left out."""
    from harness import DEMO, QUIET, run_cli_subprocess

    run_cli_subprocess(["fit", "--config", DEMO, "--config", str(Path(DEMO).parent / "loggers" / "wandb.yaml"), *QUIET,
                        "--trainer.default_root_dir", str(tmp_path / "run"), "--trainer.max_steps", "1",
                        "--trainer.val_check_interval", "1", "--data.init_args.max_samples", "8",
                        "--data.init_args.batch_size", "4"], cwd=tmp_path)
    keys = config_keys(tmp_path / "run")
    assert "config" in keys and "params/trainable_params" in keys
    assert not {"seed", "_instantiator", "optim", "adapter", "batch_size"} & set(keys), keys


def test_test_and_compare_of_a_wandb_run_keep_its_files_and_find_its_summary(tmp_path):
    """With the W&B logger the run directory is ``default_root_dir`` itself: its checkpoints sit in it, ``test``
    writes into a directory (and W&B run) of its own instead of over the training run's ``config.yaml``, and
    ``compare`` finds the run's summary from the checkpoint."""
    from harness import DEMO, QUIET, run_cli_subprocess

    run = tmp_path / "run"
    small = ["--data.init_args.max_samples", "8", "--data.init_args.batch_size", "4",
             "--model.init_args.evaluation.max_new_tokens", "4"]
    run_cli_subprocess(["fit", "--config", DEMO, "--config", str(Path(DEMO).parent / "loggers" / "wandb.yaml"),
                        *QUIET, *small, "--trainer.default_root_dir", str(run), "--trainer.max_steps", "2",
                        "--trainer.val_check_interval", "1"], cwd=tmp_path)
    ckpts = sorted((run / "checkpoints").glob("*.ckpt"))
    assert ckpts, sorted(str(p.relative_to(run)) for p in run.rglob("*.ckpt"))
    fit_config = (run / "config.yaml").read_text()
    train_id = (run / "wandb_run_id").read_text().strip()

    tested = run_cli_subprocess(["test", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpts[-1]),
                                 *QUIET, *small], cwd=tmp_path)
    assert (run / "config.yaml").read_text() == fit_config
    assert (run / "test_0" / "metrics.json").is_file() and not (run / "metrics.json").exists()
    assert (run / "test_0" / "wandb_run_id").read_text().strip() != train_id
    assert "writing into" in tested.stderr and "test_0" in tested.stderr

    run_cli_subprocess(["compare", "--config", str(run / "config.yaml"), "--ckpt_path", str(ckpts[-1]), *small],
                       cwd=tmp_path)
    report = (run / "compare" / "report.md").read_text()
    assert "training wall time: " in report and "None" not in report and "not recorded" not in report
    assert re.search(r"\| hit_max_new_tokens \| \d+ \| \d+ \| [+-]\d+ \| lower \|", report)  # counts, not 1.0000
