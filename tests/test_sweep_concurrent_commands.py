"""Two ``lit-lora sweep`` commands on one sweep at the same time (a second terminal, a resubmission while the first
still submits): ``sweep.json`` stays whole, and the points are submitted once.

No SLURM here: ``sbatch`` is replaced by a stand-in that takes a while to answer (so that the two submissions
overlap) and the array tasks' states by what it submitted.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import threading
import time

from harness import DEMO, REPO, cli_run

import lit_lora.sweep.state as state
from lit_lora.sweep.run import submit
from lit_lora.sweep.state import load_sweep, save_sweep


def test_sweep_json_written_by_two_commands_at_once_stays_whole(tmp_path):
    """Before: both wrote one ``sweep.json.tmp``; the slower one's rename found it gone (FileNotFoundError)."""
    errors = []

    def write(points: int) -> None:
        for _ in range(60):
            try:
                save_sweep(tmp_path, {"name": "s", "points": [{"index": i} for i in range(points)], "slurm": []})
            except OSError as err:
                errors.append(err)

    threads = [threading.Thread(target=write, args=(n,)) for n in (3000, 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors[:2]
    assert len(load_sweep(tmp_path)["points"]) in (3000, 3)


def test_two_submissions_at_once_submit_each_point_once(tmp_path, monkeypatch):
    """Before: both read ``sweep.json`` before either had submitted, so both submitted every point (two array
    jobs training in one point directory), and ``sweep.json`` kept only the submission written last."""
    result = cli_run(["sweep", "--config", DEMO, "--runs_dir", str(tmp_path), "--name", "s", "--grid",
                      "model.init_args.optim.lr=1e-3,3e-3", "--dry_run", "--slurm"])
    assert result.returncode == 0, result.stderr
    sweep_dir = tmp_path / "s"
    submitted: dict[str, list[int]] = {}
    job_ids = itertools.count(9001)
    real_run = subprocess.run

    def fake_sbatch(cmd, *args, **kwargs):
        if cmd[0] != "sbatch":
            return real_run(cmd, *args, **kwargs)
        time.sleep(0.5)
        job = str(next(job_ids))
        spec = next(a for a in cmd if a.startswith("--array=")).split("=", 1)[1]
        submitted[job] = state._expand_task_ids(spec)
        return subprocess.CompletedProcess(cmd, 0, f"{job}\n", "")

    monkeypatch.setattr(subprocess, "run", fake_sbatch)
    monkeypatch.setattr(state, "slurm_array_states", lambda job: dict.fromkeys(submitted.get(str(job), []),
                                                                               "PENDING"))
    sweep = load_sweep(sweep_dir)
    args = argparse.Namespace(script=str(REPO / "slurm" / "single_node.sbatch"), max_parallel=None, sbatch=[])
    threads = [threading.Thread(target=submit, args=(sweep_dir, json.loads(json.dumps(sweep)), sweep["points"],
                                                     args)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(itertools.chain(*submitted.values())) == [0, 1], submitted  # each point once
    recorded = {s["job_id"]: s["indices"] for s in load_sweep(sweep_dir)["slurm"]}
    assert recorded == submitted
