"""``lit-lora sweep --slurm``: one job array on the real local SLURM cluster (started by ``.ci/slurm_up.sh``).

    bash .ci/slurm_up.sh && python -m pytest -m slurm tests/test_sweep_slurm.py

Three points of a tiny Llama (2 steps each), one with an impossible learning rate: one array job, one run
directory per point (``slurm/launch.sh`` reads the point's config from ``points.txt``), the two good points
trained, the bad one reported as failed with the end of its log; resubmitting sends the failed point only.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from harness import logged_steps, read_losses, run_cli_subprocess

from lit_lora.sweep.state import FAILED, FINISHED, PENDING, RUNNING, STOPPED, load_sweep, point_states

pytestmark = pytest.mark.slurm

if shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0:
    pytestmark = [pytest.mark.slurm, pytest.mark.skip(reason="no SLURM cluster (run .ci/slurm_up.sh as root)")]

LR = "model.init_args.optim.lr"
TINY_RUN = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--baseline.limit_batches", "1", "--data.init_args.max_samples", "40", "--data.init_args.batch_size", "4",
            "--trainer.enable_progress_bar", "false"]
SBATCH = ["--slurm", "--gres=none", "--cpus-per-task=1", "--nodes=1", "--ntasks-per-node=1", "--time=10",
          "--max_parallel", "2"]


def lit_lora(*args: str) -> subprocess.CompletedProcess:
    # the array tasks run `srun lit-lora …`: the entry point of this environment must be on their PATH (the
    # harness puts this Python's bin/ first)
    return run_cli_subprocess(args, via="module", env={"MASTER_ADDR": "127.0.0.1"})


def wait_until_settled(sweep_dir: Path, timeout: float = 420) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        sweep = load_sweep(sweep_dir)
        states = {p["name"]: s for p, s in point_states(sweep_dir, sweep)}
        if not any(s.state in (PENDING, RUNNING) for s in states.values()):
            return states
        time.sleep(2)
    job = load_sweep(sweep_dir)["slurm"][-1]["job_id"]
    subprocess.run(["scancel", job])
    pytest.fail(f"sweep array {job} not done after {timeout}s: {[(n, s.state) for n, s in states.items()]}")


def test_sweep_runs_as_one_job_array(tiny_model, tmp_path):
    runs = tmp_path / "runs"
    args = ["sweep", "--config", "configs/demo.yaml", "--grid", f"{LR}=1e-3,3e-3,1e30", "--runs_dir", str(runs),
            "--name", "lr", "--model.init_args.model_name_or_path", tiny_model("llama"), *TINY_RUN, *SBATCH]
    out = lit_lora(*args).stdout
    sweep_dir = runs / "lr"
    sweep = load_sweep(sweep_dir)
    (submission,) = sweep["slurm"]
    job = submission["job_id"]
    assert submission["indices"] == [0, 1, 2] and submission["array"] == "0-2%2"
    assert f"SLURM array job {job}" in out and f"squeue -r -j {job}" in out

    states = wait_until_settled(sweep_dir)
    assert {n: s.state for n, s in states.items()} == {"lr=0.001": FINISHED, "lr=0.003": FINISHED, "lr=1e+30": FAILED}
    for point in ("lr=0.001", "lr=0.003"):
        run_dir = sweep_dir / point
        assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 0
        assert json.loads((run_dir / "run_summary.json").read_text())["global_step"] == 2
        assert (run_dir / "metrics.csv").is_file() and (run_dir / "config.yaml").is_file()
        status = json.loads((run_dir / "sweep_status.json").read_text())
        assert status["runner"] == "slurm" and status["returncode"] == 0 and status["job"].startswith(f"{job}_")
        log = (run_dir / "log.txt").read_text()
        assert log.count("saved the lora adapter to") == 1 and f"run dir {run_dir.resolve()}" in log
    assert "exit status 1" in states["lr=1e+30"].detail

    report = lit_lora("sweep", "report", str(sweep_dir)).stdout
    assert "lr=1e+30: failed" in report
    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    assert [r["point"] for r in rows] == ["lr=0.001", "lr=0.003", "lr=1e+30"]
    assert [r["state"] for r in rows] == ["finished", "finished", "failed"]
    assert all(float(r["tuned_val_loss"]) > 0 for r in rows[:2])
    md = (sweep_dir / "report.md").read_text()
    assert "### lr=1e+30: failed" in md and "non-finite training loss (nan) at global step 1" in md
    assert f"SLURM array job {job}" in md

    # resubmitting the same sweep sends only the point that did not finish, as a new one-task array
    out = lit_lora(*args).stdout
    assert "lr=0.001 is finished, not submitted" in out and "lr=0.003 is finished, not submitted" in out
    sweep = load_sweep(sweep_dir)
    assert len(sweep["slurm"]) == 2 and sweep["slurm"][1]["indices"] == [2]
    states = wait_until_settled(sweep_dir)
    assert states["lr=1e+30"].state == FAILED and states["lr=0.001"].state == FINISHED
    assert "non-finite training loss" in (sweep_dir / "lr=1e+30" / "attempts" / "1" / "log.txt").read_text()


def test_a_cancelled_point_resumes_from_its_preemption_checkpoint_when_resubmitted(tiny_model, tmp_path):
    """``scancel`` of a running point: SIGTERM, the point saves ``hpc_ckpt_1.ckpt`` at the step's end and stops
    (state "stopped", not "failed"); resubmitting the sweep resumes it in place, every step logged once."""
    runs, steps = tmp_path / "runs", 60
    run = [*TINY_RUN, "--trainer.log_every_n_steps", "1"]
    run[run.index("--trainer.max_steps") + 1] = str(steps)
    args = ["sweep", "--config", "configs/demo.yaml", "--grid", f"{LR}=3e-3", "--runs_dir", str(runs), "--name",
            "stop", "--model.init_args.model_name_or_path", tiny_model("llama"), *run, *SBATCH]
    lit_lora(*args)
    sweep_dir, run_dir = runs / "stop", runs / "stop" / "lr=0.003"
    job = load_sweep(sweep_dir)["slurm"][0]["job_id"]
    deadline = time.time() + 240
    while not ((run_dir / "metrics.csv").exists() and read_losses(run_dir) and max(read_losses(run_dir)) >= 4):
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    subprocess.run(["scancel", f"{job}_0"], check=True)

    states = wait_until_settled(sweep_dir)
    stopped = states["lr=0.003"]
    assert stopped.state == STOPPED and "hpc_ckpt_1.ckpt" in stopped.detail, (stopped, stopped.log.read_text()[-3000:])
    saved_at = max(read_losses(run_dir))
    assert saved_at < steps and not (run_dir / "run_summary.json").exists()

    out = lit_lora(*args).stdout
    assert f"lr=0.003 is stopped (SLURM {job}_0 CANCELLED): resumes from {run_dir.resolve() / 'hpc_ckpt_1.ckpt'}" in out
    states = wait_until_settled(sweep_dir)
    assert states["lr=0.003"].state == FINISHED, states["lr=0.003"].log.read_text()[-3000:]
    assert json.loads((run_dir / "run_summary.json").read_text())["global_step"] == steps
    assert logged_steps(run_dir) == list(range(steps))  # none repeated, none skipped across the two jobs
    assert not (run_dir / "attempts").exists()
    assert f"{steps - saved_at} steps after resuming at step {saved_at}" in (run_dir / "log.txt").read_text()
