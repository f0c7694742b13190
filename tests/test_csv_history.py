"""``metrics.csv`` across a requeue: the resumed job continues the history instead of deleting it."""

from pathlib import Path

from harness import demo_cli, metrics_rows

from lit_lora.cluster.csv_history import ResumableCSVLogger


def rows(path):
    """The rows of the metrics.csv at ``path``."""
    return metrics_rows(path.parent)


def first_job(run_dir):
    """Six optimizer steps (logged under 0-5), validation after the fourth (logged under 3), then preempted."""
    logger = ResumableCSVLogger(save_dir=str(run_dir), name="", version="", flush_logs_every_n_steps=1)
    for step in range(6):
        logger.log_metrics({"train_loss": 10.0 - step}, step=step)
    logger.log_metrics({"val_loss": 7.5}, step=3)
    logger.log_metrics({"val_loss": 5.5}, step=5)  # after the checkpoint: the resumed run validates again
    logger.save()
    return run_dir / "metrics.csv"


def test_requeued_job_continues_metrics_csv_from_its_checkpoint_step(tmp_path):
    path = first_job(tmp_path)
    assert len(rows(path)) == 8

    resumed = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="", flush_logs_every_n_steps=1)
    resumed.log_hyperparams({"lr": 0.1})  # what Lightning does first: the writer must not delete the file
    assert len(rows(path)) == 8
    assert resumed.keep_history_before(4) == 5  # the checkpoint after 4 steps: rows logged under 0-3
    for step in (4, 5, 6):
        resumed.log_metrics({"train_loss": 6.0 - step, "lr-AdamW": 0.1}, step=step)  # a new column too
    resumed.save()

    history = rows(path)
    train = [(int(r["step"]), float(r["train_loss"])) for r in history if r["train_loss"]]
    assert train == [(0, 10.0), (1, 9.0), (2, 8.0), (3, 7.0), (4, 2.0), (5, 1.0), (6, 0.0)]  # none twice
    assert [r["val_loss"] for r in history if r["val_loss"]] == ["7.5"]
    assert set(history[0]) == {"step", "train_loss", "val_loss", "lr-AdamW"}


def test_a_fresh_start_in_the_same_directory_begins_an_empty_history(tmp_path):
    path = first_job(tmp_path)
    fresh = ResumableCSVLogger(save_dir=str(tmp_path), name="", version="")
    assert fresh.keep_history_before(0) == 0
    fresh.log_metrics({"train_loss": 3.0}, step=0)
    fresh.save()
    assert [r["train_loss"] for r in rows(path)] == ["3.0"]


def test_the_default_logger_is_csv_where_tensorboard_is_installed(tiny_model, tmp_path, monkeypatch):
    """Lightning's default logger is TensorBoard wherever tensorboard is installed (most GPU images); lit-lora's
    stays CSV, so a config writes the metrics.csv that fit's summary and compare read on every machine."""
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.trainer.connectors.logger_connector import logger_connector

    monkeypatch.setattr(logger_connector, "_TENSORBOARD_AVAILABLE", True)
    trainer = demo_cli(tiny_model("llama"), tmp_path).trainer
    assert [type(logger) for logger in trainer.loggers] == [CSVLogger]
    assert Path(trainer.log_dir) == tmp_path / "lightning_logs" / "version_0"  # Lightning's CSV layout


def test_a_runs_saved_config_follows_a_new_default_root_dir(tiny_model, tmp_path):
    """The default CSV logger is handed to the Trainer, not written into config.yaml: ``lit-lora test --config
    <run>/config.yaml --trainer.default_root_dir DIR`` writes under DIR, not beside the training run."""
    import yaml
    from harness import build_cli, fit

    cli = demo_cli(tiny_model("llama"), tmp_path / "train", "--trainer.max_steps", "1",
                   "--trainer.limit_val_batches", "1", "--baseline.enabled", "false")
    fit(cli)
    saved = Path(cli.trainer.log_dir) / "config.yaml"
    assert yaml.safe_load(saved.read_text())["trainer"]["logger"] in (None, True)
    again = build_cli(["--config", str(saved), "--trainer.default_root_dir", str(tmp_path / "elsewhere")], run=False)
    assert Path(again.trainer.log_dir) == tmp_path / "elsewhere" / "lightning_logs" / "version_0"
