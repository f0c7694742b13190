"""Cluster faults that must end in a clean stop or a resumable job, never a crash or an overwritten run.

* W&B unreachable: the run logs to an offline W&B run (``wandb sync`` later), on the first start and after a requeue.
* SIGTERM, and a preemption signal that arrives before training (during tokenisation): checkpoint at the
  next optimizer-step boundary, exit, and the requeued job continues from there.
* A signal during the last step lets the run finish; one before it exits only after that step's checkpoints and
  validation; a failed ``scontrol requeue`` names the ``--ckpt_path`` to resubmit with; a requeued job resumes
  from the run's newest checkpoint, also when that is a periodic one newer than ``hpc_ckpt_N.ckpt``.
* A requeued job without a checkpoint starts fresh only when ``preemption.start_fresh_if_no_checkpoint`` says so.
* A run directory inside the data or the model directory, or a fresh run into a used run directory: refused at start.

Runs go through ``LitLoraCLI`` on ``configs/demo.yaml`` with a tiny Llama, 1–3 optimizer steps, in the SLURM
layout (``SLURM_*`` set, so the logger is pinned to ``default_root_dir`` as under ``slurm/launch.sh``).
Real signals are sent to this process; a safety net handler catches any that lit-lora does not take, so
pytest is never killed, and every test restores the handlers it found.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from harness import SAMPLES, KillBeforeStep, Killed, build_cli, demo_args, demo_cli, fit, logged_steps, \
    validation_rows
from lightning.pytorch import Callback

from lit_lora.commands.train import LitLoraCLI
from lit_lora.cluster.launch_checks import MissingResumeCheckpoint, RunDirectoryConflict, check_run_location, \
    hpc_checkpoints
from lit_lora.cluster.preemption import PreemptionCheckpoint, Requeued

pytestmark = pytest.mark.faults
SAMPLE = SAMPLES / "python_codes_25k.jsonl"
JOB_ID = "4242"
SLURM_ENV = {"SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "lit-lora", "SLURM_NTASKS": "1",
             "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_RESTART_COUNT": "0"}
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


# ---- fixtures and helpers ---------------------------------------------------------------------------
@pytest.fixture
def signal_net():
    """Signals no lit-lora handler took (a recording handler instead of the default kill); handlers restored after."""
    before = {s: signal.getsignal(s) for s in PREEMPTION_SIGNALS}
    caught: list[int] = []
    for s in PREEMPTION_SIGNALS:
        signal.signal(s, lambda signum, frame: caught.append(signum))
    try:
        yield caught
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


@pytest.fixture
def slurm(monkeypatch, signal_net):
    """This process as task 0 of a one-task SLURM job; ``slurm(restarts=1)`` makes it the requeued job."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)
    for key, value in SLURM_ENV.items():
        monkeypatch.setenv(key, value)

    def restart(restarts: int) -> None:
        monkeypatch.setenv("SLURM_RESTART_COUNT", str(restarts))

    return restart


def small_run(*extra: str, steps: int = 2) -> list[str]:
    """9 training rows in batches of 2 (5 batches an epoch), no validation."""
    return ["--data.init_args.max_samples", "12", "--data.init_args.val_fraction", "0.25",
            "--data.init_args.batch_size", "2", "--data.init_args.max_length", "256",
            "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
            "--trainer.limit_val_batches", "0", "--baseline.enabled", "false", "--preemption.requeue", "false", *extra]


def cli(model_dir: str, root: Path, *extra: str, steps: int = 2) -> LitLoraCLI:
    """The demo config on ``small_run``, built but not run (``fit(cli)``)."""
    return demo_cli(model_dir, root, *small_run(*extra, steps=steps))


class SendAtBatch(Callback):
    """Send ``signum`` to this process while batch ``index`` of the first epoch trains (as SLURM would)."""

    def __init__(self, signum: int, index: int):
        self.signum, self.index = signum, index

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.current_epoch == 0 and batch_idx == self.index:
            os.kill(os.getpid(), self.signum)


def messages(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


# ---- W&B --------------------------------------------------------------------------------------------
def offline_runs(run_dir: Path, run_id: str) -> list[Path]:
    found = (run_dir / "wandb").glob(f"offline-run-*-{run_id}")
    return sorted(p for p in found if (p / f"run-{run_id}.wandb").is_file())


def test_unreachable_wandb_falls_back_to_an_offline_run_that_a_requeue_continues(tiny_model, tmp_path, monkeypatch,
                                                                               caplog):
    import wandb

    from lit_lora.cluster.tracking import WandbRun

    for key, value in {"WANDB_MODE": "online", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "0" * 40,
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "wandb-data")}.items():
        monkeypatch.setenv(key, value)
    root = tmp_path / "run"
    caplog.set_level(logging.WARNING, logger="lit_lora")
    wandb.teardown()  # a fresh process's wandb: its settings are read from the environment above, not kept
    try:
        started = time.monotonic()
        run = cli(tiny_model("llama"), root, "--trainer.logger", "lit_lora.cluster.tracking.WandbRun",
                  "--trainer.logger.init_args.init_timeout", "3", steps=1)
        fit(run)
        assert time.monotonic() - started < 60  # wandb's own default waits 90 s (+10 s grace), then crashes
        assert run.trainer.global_step == 1
        wandb.finish()  # what the end of the process does

        run_id = (root / "wandb_run_id").read_text().strip()
        (first,) = offline_runs(root, run_id)
        assert f"wandb sync {first}" in messages(caplog) and "http://127.0.0.1:9" in messages(caplog)

        caplog.clear()
        requeued = WandbRun(save_dir=str(root), init_timeout=3)  # the requeued job: same run directory
        assert requeued.experiment.id == run_id
        requeued.experiment.log({"resumed": 1.0})
        requeued.experiment.finish()
        second = [p for p in offline_runs(root, run_id) if p != first]
        assert len(second) == 1 and f"wandb sync {second[0]}" in messages(caplog)
    finally:
        wandb.finish()
        wandb.teardown()


# ---- signals ----------------------------------------------------------------------------------------
def test_sigterm_mid_window_checkpoints_at_the_step_end_and_the_requeued_job_continues(tiny_model, tmp_path, slurm,
                                                                                    signal_net):
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    first = cli(model, root, "--trainer.accumulate_grad_batches", "2", steps=3)
    first.trainer.callbacks.append(SendAtBatch(signal.SIGTERM, index=2))  # 1st micro-batch of step 2
    with pytest.raises(Requeued):
        fit(first)
    assert signal_net == []  # taken by lit-lora, not by the safety net
    assert first.trainer.global_step == 2  # the window of batches 2-3 finished before the save
    assert [p.name for p in hpc_checkpoints(root)] == ["hpc_ckpt_1.ckpt"]

    slurm(restarts=1)
    resumed = cli(model, root, "--trainer.accumulate_grad_batches", "2", steps=3)
    fit(resumed)  # Lightning's SLURM auto-resume picks hpc_ckpt_1.ckpt
    assert resumed.trainer.global_step == 3
    assert logged_steps(root) == [0, 1, 2]  # every step once across the requeue


@pytest.mark.parametrize("signum, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)],
                         ids=["SIGUSR1", "SIGTERM"])
def test_a_signal_during_tokenisation_checkpoints_at_the_first_step(tiny_model, tmp_path, slurm, signal_net, caplog,
                                                                    monkeypatch, signum, requeued):
    """SIGUSR1 requeues; SIGTERM (also what ``scancel`` sends) saves and stops without requeueing."""
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    caplog.set_level(logging.INFO, logger="lit_lora")
    requeues = []
    monkeypatch.setattr(PreemptionCheckpoint, "_requeue", staticmethod(lambda: requeues.append(JOB_ID)))
    first = cli(model, root, "--preemption.requeue", "true", steps=3)
    tokenise = first.datamodule.setup

    def signalled_while_tokenising(stage=None):
        os.kill(os.getpid(), signum)  # before the Trainer (and Lightning's own handlers) set anything up
        tokenise(stage)

    first.datamodule.setup = signalled_while_tokenising
    with pytest.raises(Requeued):
        fit(first)
    assert signal_net == []
    assert first.trainer.global_step == 1
    assert [p.name for p in hpc_checkpoints(root)] == ["hpc_ckpt_1.ckpt"]
    assert f"{signal.Signals(signum).name} received before training started" in messages(caplog)
    assert requeues == ([JOB_ID] if requeued else [])
    assert requeued or "not requeueing after SIGTERM" in messages(caplog)

    slurm(restarts=1)
    resumed = cli(model, root, steps=3)
    fit(resumed)
    assert resumed.trainer.global_step == 3 and logged_steps(root) == [0, 1, 2]


def test_a_signal_during_the_imports_checkpoints_at_the_first_step(tiny_model, tmp_path, slurm, signal_net, caplog,
                                                                   monkeypatch):
    """``lit-lora fit`` keeps SIGUSR1 from its first line (``early_signals.record`` in ``entry``), seconds before
    the CLI builds the preemption callback, which takes the signal over."""
    from lit_lora.cluster import early_signals

    model, root = tiny_model("llama"), tmp_path / JOB_ID
    caplog.set_level(logging.INFO, logger="lit_lora")
    requeues = []
    monkeypatch.setattr(PreemptionCheckpoint, "_requeue", staticmethod(lambda: requeues.append(JOB_ID)))
    early_signals.record()
    os.kill(os.getpid(), signal.SIGUSR1)  # while torch and Lightning would still be importing
    first = cli(model, root, "--preemption.requeue", "true", steps=3)
    with pytest.raises(Requeued):
        fit(first)
    assert signal_net == []
    assert first.trainer.global_step == 1 and [p.name for p in hpc_checkpoints(root)] == ["hpc_ckpt_1.ckpt"]
    assert "SIGUSR1 received before training started" in messages(caplog) and requeues == [JOB_ID]


@pytest.mark.parametrize("limits, index", [(("--trainer.max_steps", "3"), 2),
                                           (("--trainer.max_steps", "-1", "--trainer.max_epochs", "1"), 4)],
                         ids=["max_steps", "max_epochs"])
def test_a_signal_during_the_last_step_lets_the_run_finish(tiny_model, tmp_path, slurm, signal_net, caplog, limits,
                                                          index):
    """Saving and requeueing at the run's last step would leave a requeued job with nothing to train: no
    adapter, no final checkpoint, no summary. The run finishes instead."""
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    caplog.set_level(logging.INFO, logger="lit_lora")
    run = cli(model, root, *limits)
    run.trainer.callbacks.append(SendAtBatch(signal.SIGUSR1, index=index))  # the last of 5 batches in max_epochs
    fit(run)
    assert signal_net == [] and hpc_checkpoints(root) == []
    assert (root / "adapter").is_dir() and (root / "run_summary.json").is_file()
    assert [p.name for p in (root / "checkpoints").glob("*.ckpt")] == [f"epoch=0-step={index + 1}.ckpt"]
    assert "SIGUSR1 received after the last optimizer step; the run finished instead" in messages(caplog)


def test_the_checkpoint_and_validation_due_at_the_preempted_step_still_run(tiny_model, tmp_path, slurm):
    """The job stops at the next batch's start, after the loop validated and the checkpoint callbacks saved at the
    step it checkpointed; the requeued job redoes neither."""
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    every_two = ["--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
                 "--checkpoint.every_n_train_steps", "2", "--checkpoint.save_top_k", "-1",
                 "--checkpoint.filename", "{step}"]
    first = cli(model, root, *every_two, steps=4)
    first.trainer.callbacks.append(SendAtBatch(signal.SIGUSR1, index=1))  # step 2
    with pytest.raises(Requeued):
        fit(first)
    assert first.trainer.global_step == 2 and [p.name for p in hpc_checkpoints(root)] == ["hpc_ckpt_1.ckpt"]
    assert sorted(p.name for p in (root / "checkpoints").iterdir()) == ["step=2-adapter", "step=2.ckpt"]
    assert [row["step"] for row in validation_rows(root)] == [1]

    slurm(restarts=1)
    fit(cli(model, root, *every_two, steps=4))
    assert sorted(p.name for p in (root / "checkpoints").glob("*.ckpt")) == ["step=2.ckpt", "step=4.ckpt"]
    assert [row["step"] for row in validation_rows(root)] == [1, 3] and logged_steps(root) == [0, 1, 2, 3]


def test_a_failed_requeue_keeps_the_steps_metrics_and_names_the_checkpoint_to_resubmit_with(tiny_model, tmp_path,
                                                                                         slurm, monkeypatch):
    """slurm/launch.sh names the run directory by job id: the same sbatch command would start a new run from step
    0, so the error names the ``--ckpt_path`` that continues this one."""
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'scontrol: error: Invalid job id specified' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    first = cli(model, root, "--preemption.requeue", "true", steps=4)
    first.trainer.callbacks.append(SendAtBatch(signal.SIGUSR1, index=1))
    with pytest.raises(RuntimeError, match="scontrol requeue 4242 failed") as failed:
        fit(first)
    assert f"resubmit with --ckpt_path {root / 'hpc_ckpt_1.ckpt'} to continue" in str(failed.value)
    assert logged_steps(root) == [0, 1]  # the saved step's row too


def test_a_requeued_job_resumes_from_the_newest_checkpoint_not_an_older_hpc_one(tiny_model, tmp_path, slurm,
                                                                                caplog):
    """Preempted at step 2 (``hpc_ckpt_1.ckpt``), the requeued job checkpoints steps 3 and 4 and dies unsaved (a
    node failure). Lightning's auto-resume would load ``hpc_ckpt_1.ckpt`` and train steps 3 and 4 again
    (``step=3-v1.ckpt`` …); the next restart resumes from ``step=4.ckpt``. A tie goes to ``hpc_ckpt_N``."""
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    caplog.set_level(logging.INFO, logger="lit_lora")
    every_step = ["--checkpoint.every_n_train_steps", "1", "--checkpoint.save_top_k", "-1",
                  "--checkpoint.filename", "{step}"]
    first = cli(model, root, *every_step, steps=6)
    first.trainer.callbacks.append(SendAtBatch(signal.SIGUSR1, index=1))
    with pytest.raises(Requeued):
        fit(first)

    slurm(restarts=1)
    second = cli(model, root, *every_step, steps=6)
    second.trainer.callbacks.append(KillBeforeStep(4))
    with pytest.raises(Killed):
        fit(second)
    assert second.trainer.ckpt_path == str(root / "hpc_ckpt_1.ckpt")  # step 2, as step=2.ckpt: Lightning's pick

    slurm(restarts=2)
    caplog.clear()
    third = cli(model, root, *every_step, steps=6)
    fit(third)
    newest = root / "checkpoints" / "step=4.ckpt"
    assert third.trainer.ckpt_path == str(newest) and third.trainer.global_step == 6
    assert f"resuming from {newest} at global step 4, the run's newest checkpoint, newer than hpc_ckpt_1.ckpt " \
           "(step 2)" in messages(caplog)
    assert sorted(p.name for p in (root / "checkpoints").glob("*.ckpt")) == [f"step={n}.ckpt" for n in range(1, 7)]
    assert logged_steps(root) == list(range(6))

    # `lit-lora fit --ckpt_path` (what a failed requeue says to resubmit with) resumes that one, newer ones or not
    slurm(restarts=3)
    caplog.clear()
    chosen = root / "checkpoints" / "step=2.ckpt"
    fourth = build_cli(["fit", *demo_args(model, root, *small_run(*every_step, steps=3)), "--ckpt_path", str(chosen)])
    assert fourth.trainer.ckpt_path == str(chosen) and fourth.trainer.global_step == 3
    assert "resuming from" not in messages(caplog)


def test_the_newest_checkpoint_is_a_complete_one_and_only_a_restart_looks(tmp_path):
    """A save in progress (hidden ``.partial-*`` name) and an unreadable file are no candidates; a first start
    without ``hpc_ckpt_N.ckpt`` resumes nothing."""
    import torch
    from lightning.pytorch import Trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lit_lora.cluster.preemption import resume_newest

    saved = {"hpc_ckpt_1.ckpt": 2, "checkpoints/step=5.ckpt": 5, "checkpoints/.partial-1.step=9.ckpt": 9}
    for name, step in saved.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        torch.save({"global_step": step}, tmp_path / name)
    (tmp_path / "checkpoints" / "step=7.ckpt").write_bytes(b"cut short")

    def trainer() -> Trainer:
        return Trainer(default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                       callbacks=[ModelCheckpoint(dirpath=tmp_path / "checkpoints")])

    restarted = trainer()
    assert resume_newest(restarted, env={**SLURM_ENV, "SLURM_RESTART_COUNT": "1"}) == tmp_path / "checkpoints" / \
        "step=5.ckpt" and restarted.ckpt_path == str(tmp_path / "checkpoints" / "step=5.ckpt")
    (tmp_path / "hpc_ckpt_1.ckpt").unlink()
    fresh = trainer()
    assert resume_newest(fresh, env=SLURM_ENV) is None and fresh.ckpt_path is None


def test_a_kept_signal_no_run_takes_goes_to_the_handler_it_replaced(monkeypatch):
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        from lit_lora.cluster import early_signals

        early_signals.record({"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "job"})
        os.kill(os.getpid(), signal.SIGUSR1)
        assert got == []  # kept
        early_signals.release()
        assert got == [signal.SIGUSR1]
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_requeued_job_without_checkpoint_starts_fresh_only_when_asked(tiny_model, tmp_path, slurm, caplog):
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    root.mkdir()
    (root / "slurm.out").write_text("[lit-lora] job 4242 restart 0\n")
    (root / "config.yaml").write_text("# written by the first start, whose node failed before any save\n")
    slurm(restarts=1)
    with pytest.raises(MissingResumeCheckpoint, match="preemption.start_fresh_if_no_checkpoint"):
        fit(cli(model, root, steps=1))

    caplog.set_level(logging.WARNING, logger="lit_lora")
    fresh = cli(model, root, "--preemption.start_fresh_if_no_checkpoint", "true", steps=1)
    fit(fresh)
    assert fresh.trainer.global_step == 1
    assert "starting again from step 0" in messages(caplog)

    checkpoint = tmp_path / "step-1.ckpt"
    fresh.trainer.save_checkpoint(checkpoint)
    resumed = cli(model, root, steps=2)  # a requeued job pointed at a checkpoint by hand, as the error suggests
    fit(resumed, ckpt_path=str(checkpoint))
    assert resumed.trainer.global_step == 2 and logged_steps(root) == [0, 1]


# ---- run directories --------------------------------------------------------------------------------
def test_hub_ids_files_and_bundled_samples_are_no_input_directories(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    run_dirs = {"trainer.default_root_dir": tmp_path / "runs", "trainer.log_dir": tmp_path}
    check_run_location(run_dirs, [("data", "data.source", "python_codes_25k.jsonl"),
                                  ("data", "data.source", str(tmp_path / "train.jsonl")),
                                  ("data", "data.source", "nyu-mll/multi_nli"), ("data", "data.source", None),
                                  ("model", "model.model_name_or_path", "meta-llama/Meta-Llama-3-8B")])
    with pytest.raises(RunDirectoryConflict, match=r"inside the data directory .* \(data.source\)"):
        check_run_location(run_dirs, [("data", "data.source", str(tmp_path))])


@pytest.mark.parametrize("inside", ["data", "model"])
def test_a_run_directory_inside_the_data_or_the_model_directory_is_refused(tiny_model, tmp_path, slurm, inside):
    data, model = tmp_path / "data", tmp_path / "model"
    data.mkdir()
    (data / "codes.jsonl").write_text("".join(SAMPLE.read_text().splitlines(keepends=True)[:40]))
    shutil.copytree(tiny_model("llama"), model)
    root = data if inside == "data" else model / "runs"
    model_files = sorted(p.name for p in model.iterdir())

    run = cli(str(model), root, "--data.init_args.source", str(data), steps=1)
    with pytest.raises(RunDirectoryConflict) as error:
        fit(run)
    message = str(error.value)
    assert str(root.resolve()) in message and str((data if inside == "data" else model).resolve()) in message
    assert sorted(p.name for p in data.iterdir()) == ["codes.jsonl"]  # the next run still reads only data
    assert sorted(p.name for p in model.iterdir() if p.name != "runs") == model_files
    assert not (model / "runs").exists() or not any((model / "runs").iterdir())


def test_a_fresh_run_into_a_used_run_directory_is_refused_and_a_resume_is_not(tiny_model, tmp_path, slurm):
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    first = cli(model, root, steps=1)
    fit(first)
    kept = {p: p.read_bytes() for p in [root / "config.yaml", root / "metrics.csv",
                                        *(root / "adapter").iterdir()]}
    checkpoint = tmp_path / "first-run-step-1.ckpt"  # e.g. from checkpoint.every_n_train_steps
    first.trainer.save_checkpoint(checkpoint)

    with pytest.raises(RunDirectoryConflict, match="--ckpt_path") as error:
        fit(cli(model, root, steps=1))
    assert str(root.resolve()) in str(error.value)
    assert {p: p.read_bytes() for p in kept} == kept  # config, metrics and adapter of the first run untouched

    resumed = cli(model, root, steps=2)
    fit(resumed, ckpt_path=str(checkpoint))
    assert resumed.trainer.global_step == 2 and logged_steps(root) == [0, 1]


def test_a_run_that_failed_before_its_first_step_does_not_block_the_corrected_rerun(tiny_model, tmp_path, slurm):
    """A bad target module fails in ``configure_model``, after Lightning saved ``config.yaml`` into the pinned run
    directory: the failed run removes it (it never trained), and the corrected command runs there."""
    model, root = tiny_model("llama"), tmp_path / JOB_ID
    with pytest.raises(ValueError, match="'v_prj' matches no module"):
        fit(cli(model, root, "--model.init_args.adapter.init_args.target_modules", "[q_proj, v_prj]", steps=1))
    assert sorted(p.name for p in root.iterdir() if p.is_file()) == []
    rerun = cli(model, root, steps=1)
    fit(rerun)
    assert rerun.trainer.global_step == 1 and (root / "adapter").is_dir()


@pytest.mark.parametrize("array_task, advice", [
    (None, "otherwise resubmit with --ckpt_path runs/7/hpc_ckpt_1.ckpt"),
    ("3", "otherwise run the sweep command again, which resumes this point from it"),
])
def test_the_advice_after_a_sigterm_fits_a_job_or_a_sweeps_array_task(monkeypatch, caplog, array_task, advice):
    """A sweep point is resumed by running the sweep again: resubmitting its checkpoint by hand would start a run
    outside the sweep."""
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    if array_task is not None:
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", array_task)
    caplog.set_level(logging.WARNING, logger="lit_lora")
    callback = PreemptionCheckpoint(requeue=True)
    callback.received = {signal.SIGTERM}
    assert callback._should_requeue("runs/7/hpc_ckpt_1.ckpt") is False
    assert advice in caplog.text and "scontrol requeue" in caplog.text, caplog.text
