"""The project's own sbatch scripts on a real local SLURM cluster (started by ``.ci/slurm_up.sh``).

    bash .ci/slurm_up.sh && python -m pytest -m slurm tests/test_slurm.py

The order of ``slurm/launch.sh``'s arguments is checked without a cluster (a stand-in ``srun`` prints the config).

Tiny Llama, LoRA, CPU, DDP over gloo. Preemption: ``scancel --signal=USR1`` the running job, release
the requeued job (``scontrol update StartTime=now``) and compare its per-step training loss with an
uninterrupted run: same steps, same losses within 1e-4 (same batches in the same order, same optimizer state).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from harness import DEMO, REPO, logged_steps, read_losses, subprocess_env

LOSS_TOLERANCE = 1e-4
NO_CLUSTER = shutil.which("sbatch") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0


def on_slurm(test):
    """A test that submits jobs to the real cluster: marked ``slurm``, skipped without one."""
    skip = pytest.mark.skipif(NO_CLUSTER, reason="no SLURM cluster (run .ci/slurm_up.sh as root)")
    return pytest.mark.slurm(skip(test))

CONFIG = """\
seed_everything: 0
trainer:
  accelerator: cpu
  max_steps: {max_steps}
  val_check_interval: 1000
  check_val_every_n_epoch: null
  limit_val_batches: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
model:
  class_path: lit_lora.models.CausalLMModule
  init_args:
    model_name_or_path: {model}
    adapter:
      class_path: lit_lora.adapters.LoRA
      init_args: {{r: 4, alpha: 8, dropout: 0.0, target_modules: all-linear}}
    optim: {{lr: 3.0e-3, warmup_steps: 2}}
data:
  class_path: lit_lora.data.InstructionDataModule
  init_args: {{max_length: 192, batch_size: 2, max_samples: 120}}
baseline:
  limit_batches: 1
"""


def submit(script: str, config: Path, runs: Path, *sbatch_args: str, **env_vars: str) -> str:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "LIT_LORA_RUNS": str(runs),
           "LIT_LORA_STRATEGY": "configs/strategies/ddp.yaml", **env_vars}
    runs.mkdir(parents=True, exist_ok=True)  # sbatch does not create the --output directory
    out = subprocess.run(["sbatch", "--parsable", "--gres=none", "--cpus-per-task=1", "--time=10",
                          f"--output={runs}/slurm-%j.out", *sbatch_args, f"slurm/{script}", str(config)],
                         cwd=REPO, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]


def job_state(job: str) -> str:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return next((f.split("=", 1)[1] for f in out.split() if f.startswith("JobState=")), "GONE")


def wait_done(job: str, log: Path, timeout: float = 240) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "GONE"):
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    pytest.fail(f"job {job} still {job_state(job)} after {timeout}s; log:\n{log.read_text()[-3000:] if log.exists() else ''}")


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    model = tiny_model("llama")

    def config(max_steps: int) -> Path:
        path = root / f"tiny_{max_steps}.yaml"
        path.write_text(CONFIG.format(max_steps=max_steps, model=model))
        return path

    return root, config


def assert_trained_once(run_dir: Path, log: Path, ranks: int, steps: int) -> None:
    text = log.read_text()
    assert text.count("saved the lora adapter to") == 1, text[-3000:]  # the adapter is written by rank 0 only
    assert text.count("[lit-lora] train: kept") == ranks, text[-3000:]  # every rank built its data
    assert (run_dir / "adapter" / "adapter_model.safetensors").stat().st_size > 0
    assert max(read_losses(run_dir)) == steps  # optimizer steps done
    import json

    assert json.loads((run_dir / "run_summary.json").read_text())["global_step"] == steps


@on_slurm
@pytest.mark.parametrize("script, sbatch_args, ranks", [
    ("single_node.sbatch", ("--nodes=1", "--ntasks-per-node=2"), 2),
    ("multi_node_deepspeed.sbatch", ("--nodes=2", "--ntasks-per-node=1"), 2),
], ids=["1node-x-2tasks", "2nodes-x-1task"])
def test_sbatch_script_trains_on_every_rank(setup, script, sbatch_args, ranks):
    root, config = setup
    runs = root / script.split(".")[0]
    job = submit(script, config(8), runs, *sbatch_args)
    log = runs / f"slurm-{job}.out"
    assert wait_done(job, log) == "COMPLETED", log.read_text()[-3000:]
    run_dir = runs / "tiny_8" / job
    assert_trained_once(run_dir, log, ranks, steps=8)


@on_slurm
def test_allocation_mismatch_fails_fast(setup):
    root, config = setup
    runs = root / "mismatch"
    # SLURM starts 2 tasks per node, the Trainer is told 1 device: an error before any model is built
    job = submit("single_node.sbatch", config(8), runs, "--nodes=1", "--ntasks-per-node=2", LIT_LORA_DEVICES="1")
    log = runs / f"slurm-{job}.out"
    started = time.time()
    assert wait_done(job, log, timeout=120) == "FAILED"
    assert time.time() - started < 90
    assert "AllocationMismatch" in log.read_text() and "trainer.devices=1 but 2 task(s) per node" in log.read_text()


@on_slurm
def test_preempted_job_requeues_and_matches_an_uninterrupted_run(setup):
    root, config = setup
    steps = 60
    runs = root / "preempt"
    args = ("--nodes=1", "--ntasks-per-node=2")
    reference = submit("single_node.sbatch", config(steps), runs, *args)
    assert wait_done(reference, runs / f"slurm-{reference}.out") == "COMPLETED"

    job = submit("single_node.sbatch", config(steps), runs, *args)
    run_dir, log = runs / f"tiny_{steps}" / job, runs / f"slurm-{job}.out"
    deadline = time.time() + 180
    while not ((run_dir / "metrics.csv").exists() and read_losses(run_dir) and max(read_losses(run_dir)) >= 6):
        assert job_state(job) in ("PENDING", "RUNNING", "CONFIGURING"), log.read_text()[-3000:]
        assert time.time() < deadline, "training did not start"
        time.sleep(0.2)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)

    deadline = time.time() + 120
    while "Restarts=1" not in subprocess.run(["scontrol", "show", "job", job], capture_output=True,
                                               text=True).stdout:
        assert time.time() < deadline, f"job was not requeued:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    requeued_at = time.time()
    # release the held job only once the first instance has left the nodes, and not within the second
    # of the requeue: slurmd refuses a credential issued in the same second as a revocation
    # ("Job credential revoked"), which is why SLURM itself holds a requeued job for a while
    while job_state(job) != "PENDING" or "comp" in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True,
                                                                   text=True).stdout \
            or time.time() < requeued_at + 2:
        assert time.time() < deadline + 120, f"requeued job never became pending:\n{log.read_text()[-3000:]}"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
    assert wait_done(job, log) == "COMPLETED", log.read_text()[-3000:]

    text = log.read_text()
    assert "[lit-lora] preemption: saved" in text and "requeued SLURM job" in text
    saved_step = int(text.split("[lit-lora] preemption: saved")[1].split("global step")[1].split()[0])
    assert 0 < saved_step < steps
    assert (run_dir / "hpc_ckpt_1.ckpt").exists()
    assert "Restored all states from the checkpoint" in text or "Restoring states from the checkpoint" in text
    assert text.count("saved the lora adapter to") == 1
    # metrics.csv continues across the requeue: every step once, the steps before the checkpoint
    # from the first job and the rest from the resumed one
    expected, resumed = read_losses(runs / f"tiny_{steps}" / reference), read_losses(run_dir)
    assert sorted(expected) == list(range(1, steps + 1))
    assert logged_steps(run_dir) == list(range(steps))  # none repeated, none skipped
    for step in resumed:
        assert abs(resumed[step] - expected[step]) <= LOSS_TOLERANCE, (step, resumed[step], expected[step])


def test_the_launchers_keys_come_after_the_users_config_files(tmp_path):
    """A user's ``--config`` goes before the keys launch.sh sets: its default_root_dir does not move the run away
    from the directory the job log announces; the user's other arguments still come last."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(f'#!/bin/bash\nshift\nexec "$@" --print_config > {tmp_path}/printed.yaml\n')
    (bin_dir / "srun").chmod(0o755)
    mine = tmp_path / "mine.yaml"
    mine.write_text("trainer:\n  default_root_dir: elsewhere\n  max_steps: 5\n  devices: 3\n")
    env = subprocess_env({"SLURM_JOB_ID": "7", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2",
                          "MASTER_ADDR": "127.0.0.1", "LIT_LORA_RUNS": str(tmp_path / "runs")})
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = subprocess.run(["bash", "slurm/launch.sh", DEMO, "--config", str(mine), "--trainer.max_steps", "3"],
                            cwd=REPO, env=env, capture_output=True, text=True)
    run_dir = tmp_path / "runs" / "demo" / "7"
    assert result.returncode == 0 and f"run dir {run_dir}" in result.stdout, result.stdout + result.stderr
    trainer = yaml.safe_load((tmp_path / "printed.yaml").read_text())["trainer"]
    assert (trainer["default_root_dir"], trainer["devices"], trainer["num_nodes"], trainer["max_steps"]) == \
        (str(run_dir), "2", 1, 3)  # devices: a str or int option, read as given


def test_a_config_path_that_names_no_file_is_said_in_the_job_log(tmp_path):
    """The log of a job whose config path is wrong (a typo, or relative to another directory) says so, not only
    the usage lines."""
    result = subprocess.run(["bash", "slurm/launch.sh", "configs/dmeo.yaml"], cwd=REPO, capture_output=True,
                            text=True, env=subprocess_env({"SLURM_JOB_ID": "7"}))
    assert result.returncode == 2, result.stderr
    assert f"[lit-lora] no config file 'configs/dmeo.yaml' (from {REPO})" in result.stderr, result.stderr
