"""``lit-lora sweep`` (grid, names, resolved configs, local runs that resume, the report) and ``lit-lora configs``.

    python -m pytest tests/test_sweep.py

The local sweep trains a tiny random Llama for 2 steps per point; one point has an impossible learning
rate and must be reported as failed with the end of its log, and a rerun must not retrain finished points.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
import yaml
from harness import CONFIGS, DEMO, REPO, cli_run, run_cli, run_cli_subprocess

from lit_lora.sweep.grid import axis_labels, expand, parse_axis, seed_axis, split_values, value_label
from lit_lora.sweep.report import direction, point_metrics
from lit_lora.sweep.run import array_spec
from lit_lora.sweep.state import FAILED, FINISHED, INTERRUPTED, NOT_STARTED, STOPPED, config_digest, point_state, \
    resume_checkpoint

ADAPTER, R, LR = "model.init_args.adapter", "model.init_args.adapter.init_args.r", "model.init_args.optim.lr"
TINY_RUN = ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--trainer.limit_val_batches", "1",
            "--baseline.limit_batches", "1", "--data.init_args.max_samples", "40", "--data.init_args.batch_size", "4",
            "--trainer.enable_progress_bar", "false"]


def sweep_cmd(*args: str, cwd=REPO, check=True) -> subprocess.CompletedProcess:
    """``lit-lora sweep <args>`` in this process (its points are ``lit-lora fit`` processes of their own)."""
    result = cli_run(["sweep", *args], cwd=cwd)
    assert not check or result.returncode == 0, \
        f"lit-lora sweep exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


# ---- the grid ------------------------------------------------------------------------------------------
def test_grid_expansion_seeds_and_names():
    axes = [parse_axis(f"{R}=4,16"), parse_axis(f"--{LR}=1e-3,3e-3"), seed_axis(3)]
    points = expand(axes)
    assert len(points) == 2 * 2 * 3
    assert [p.name for p in points[:4]] == ["r=4-lr=0.001-seed=0", "r=4-lr=0.001-seed=1", "r=4-lr=0.001-seed=2",
                                            "r=4-lr=0.003-seed=0"]
    assert points[0].overrides == {R: "4", LR: "1e-3", "seed_everything": "0"}
    assert len({p.name for p in points}) == len(points)
    # class paths show their class; commas inside brackets do not split; clashing last parts grow
    methods = parse_axis(f"{ADAPTER}=lit_lora.adapters.LoRA,lit_lora.adapters.FullFineTuning,lit_lora.adapters.PTuning")
    assert [p.name for p in expand([methods])] == ["adapter=LoRA", "adapter=FullFineTuning", "adapter=PTuning"]
    assert split_values("[q_proj, v_proj],all-linear") == ["[q_proj, v_proj]", "all-linear"]
    assert axis_labels([LR, "data.init_args.lr"]) == {LR: "optim.lr", "data.init_args.lr": "data.lr"}
    assert value_label("FacebookAI/roberta-large") == "FacebookAI_roberta-large" and value_label("3e-5") == "3e-05"
    assert [p.name for p in expand([])] == ["base"]
    with pytest.raises(ValueError):
        parse_axis("model.init_args.optim.lr")
    with pytest.raises(ValueError):
        expand([parse_axis(f"{R}=4"), parse_axis(f"{R}=8")])
    assert array_spec([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8" and array_spec([3]) == "3"
    assert direction("val_loss") == "min" and direction("val_matched/accuracy") == "max"
    assert direction("test_bleu") == "max" and direction("val_perplexity") == "min" and direction("epoch") is None
    assert direction("hit_max_new_tokens") == "min" and direction("rougeL_fmeasure") == "max"


def test_class_path_axis_resolves_like_lightning_cli(tmp_path):
    """Changing the adapter class drops init_args the class does not take; a swept key the class does not
    accept is left out of that point (FullFineTuning has no r), and the duplicates that leaves are merged."""
    out = sweep_cmd("--config", DEMO, "--config", str(CONFIGS / "loggers" / "wandb.yaml"),
                    "--grid", f"{ADAPTER}=lit_lora.adapters.LoRA,lit_lora.adapters.FullFineTuning",
                    "--grid", f"{R}=2,4", "--seeds", "2", "--runs_dir", str(tmp_path), "--name", "methods",
                    "--dry_run", "--trainer.max_steps", "3").stdout
    sweep_dir = tmp_path / "methods"
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    names = [p["name"] for p in sweep["points"]]
    assert names == ["adapter=LoRA-r=2-seed=0", "adapter=LoRA-r=2-seed=1", "adapter=LoRA-r=4-seed=0",
                     "adapter=LoRA-r=4-seed=1", "adapter=FullFineTuning-seed=0", "adapter=FullFineTuning-seed=1"], out
    full = yaml.safe_load((sweep_dir / "adapter=FullFineTuning-seed=1" / "point.yaml").read_text())
    assert full["model"]["init_args"]["adapter"] == {"class_path": "lit_lora.adapters.FullFineTuning", "init_args": {}}
    assert full["seed_everything"] == 1 and full["trainer"]["max_steps"] == 3
    assert sweep["points"][4]["not_applicable"] == [R]
    lora = yaml.safe_load((sweep_dir / "adapter=LoRA-r=4-seed=0" / "point.yaml").read_text())
    assert lora["model"]["init_args"]["adapter"]["init_args"]["r"] == 4
    assert lora["model"]["init_args"]["adapter"]["init_args"]["alpha"] == 32  # the rest of the base config stays
    # the run directory is the point directory, for every logger; W&B runs grouped by sweep
    run_dir = str((sweep_dir / "adapter=LoRA-r=4-seed=0").resolve())
    assert lora["trainer"]["default_root_dir"] == run_dir
    csv_logger, wandb = lora["trainer"]["logger"]
    assert csv_logger["class_path"] == "lit_lora.cluster.csv_history.ResumableCSVLogger"
    assert csv_logger["init_args"]["save_dir"] == run_dir and csv_logger["init_args"]["version"] == ""
    assert wandb["init_args"]["group"] == "methods" and wandb["init_args"]["name"] == "adapter=LoRA-r=4-seed=0"
    assert wandb["init_args"]["save_dir"] == run_dir
    lines = (sweep_dir / "points.txt").read_text().splitlines()
    assert lines == [str((sweep_dir / p["config"]).resolve()) for p in sweep["points"]]
    # each written config is accepted back by lit-lora fit
    from lit_lora.commands.experiment import print_config

    assert yaml.safe_load(print_config(["--config", str(sweep_dir / "adapter=LoRA-r=4-seed=0" / "point.yaml")]))[
        "model"]["init_args"]["adapter"]["init_args"]["r"] == 4


def test_a_value_fit_refuses_is_an_error_before_anything_runs(tmp_path):
    result = sweep_cmd("--config", DEMO, "--grid", "trainer.max_steps=2,two", "--runs_dir", str(tmp_path),
                       check=False)
    assert result.returncode != 0
    assert "point max_steps=two" in result.stderr and "trainer.max_steps" in result.stderr
    linked = sweep_cmd("--config", DEMO, "--grid", "trainer.max_steps=2", "--runs_dir", str(tmp_path),
                       "--data.init_args.trust_remote_code", "true", check=False)
    assert linked.returncode != 0 and "exit status" not in linked.stderr
    assert "comes from model.init_args.trust_remote_code" in linked.stderr, linked.stderr
    for grid, refusal in (("model.init_args.optim.lr=1e-3,-1", "point lr=-1: lit-lora fit would refuse it: "
                                                                "model.init_args.optim.lr must be above 0, got -1"),
                          ("data.init_args.batch_size=4,0", "point batch_size=0: lit-lora fit would refuse it: "
                                                           "data.init_args.batch_size must be at least 1, got 0")):
        value = sweep_cmd("--config", DEMO, "--grid", grid, "--runs_dir", str(tmp_path), "--name", "values",
                          "--slurm", "--dry_run", check=False)  # refused before a task could wait in the queue
        assert value.returncode != 0 and refusal in value.stderr, value.stderr
        assert not (tmp_path / "values").exists()
    prefix = sweep_cmd("--config", DEMO, "--grid", "trainer.max_step=2,4", "--runs_dir", str(tmp_path),  # not max_steps
                       "--trainer.max_steps", "4", "--dry_run", check=False)
    assert prefix.returncode != 0 and "'trainer.max_step' is not an option of fit (did you mean " \
        "'trainer.max_steps'?)" in prefix.stderr, prefix.stderr


# ---- states ---------------------------------------------------------------------------------------------
def test_point_states(tmp_path):
    point = {"index": 0, "name": "p", "run_dir": "p"}
    run_dir = tmp_path / "p"
    run_dir.mkdir()
    assert point_state(tmp_path, point).state == NOT_STARTED
    never_ran = point_state(tmp_path, point, ("7_0", "CANCELLED"))  # scancel while pending: no log, no status
    assert (never_ran.state, never_ran.detail) == (NOT_STARTED, "SLURM 7_0 cancelled before it started")
    (run_dir / "log.txt").write_text("starting\n")
    assert point_state(tmp_path, point).state == INTERRUPTED
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "local", "returncode": 1}))
    state = point_state(tmp_path, point)
    assert state.state == FAILED and "exit status 1" in state.detail and state.log == run_dir / "log.txt"
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "local", "returncode": 0}))
    assert point_state(tmp_path, point).state == FAILED  # exited 0 without the final files
    (run_dir / "adapter").mkdir()
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    (run_dir / "run_summary.json").write_text(json.dumps({"adapter_dir": str(run_dir / "adapter")}))
    assert point_state(tmp_path, point).state == FINISHED
    # a SLURM task that SLURM reports as failed is failed, whatever files it left
    (run_dir / "sweep_status.json").unlink()
    assert point_state(tmp_path, point, ("7_0", "CANCELLED")).state == FAILED
    assert point_state(tmp_path, point, ("7_0", "PENDING")).state == "pending"


def test_a_point_with_a_preemption_checkpoint_is_stopped_until_its_settings_change(tmp_path):
    """``scancel``, the time limit or a preemption without requeue leave ``hpc_ckpt_N.ckpt`` and exit 0: such a
    point is stopped (the next run resumes it), unless it failed with its own error or its config changed since."""
    point = {"index": 0, "name": "p", "run_dir": "p"}
    run_dir = tmp_path / "p"
    run_dir.mkdir()
    (run_dir / "point.yaml").write_text("trainer: {max_steps: 4}\n")
    (run_dir / "log.txt").write_text("[lit-lora] preemption: saved\n")
    (run_dir / "hpc_ckpt_1.ckpt").write_bytes(b"1")
    (run_dir / "hpc_ckpt_2.ckpt").write_bytes(b"2")
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "slurm", "job": "7_0", "returncode": 0}))
    state = point_state(tmp_path, point)
    assert state.state == STOPPED and "exit status 0" in state.detail and "hpc_ckpt_2.ckpt" in state.detail
    assert resume_checkpoint(run_dir) == run_dir / "hpc_ckpt_2.ckpt"
    for slurm_state in ("CANCELLED", "TIMEOUT", "PREEMPTED", "NODE_FAIL"):
        state = point_state(tmp_path, point, ("7_0", slurm_state))
        assert state.state == STOPPED and f"SLURM 7_0 {slurm_state}" in state.detail
    assert point_state(tmp_path, point, ("7_0", "OUT_OF_MEMORY")).state == FAILED  # would fail the same way again
    assert point_state(tmp_path, point, ("7_0", "FAILED")).state == FAILED
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "slurm", "job": "7_0", "returncode": 1}))
    assert point_state(tmp_path, point).state == FAILED  # its own error: it starts again
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "slurm", "job": "7_0"}))
    assert point_state(tmp_path, point).state == STOPPED  # killed before the exit status was written
    later = (run_dir / "hpc_ckpt_2.ckpt").stat().st_mtime + 5
    os.utime(run_dir / "point.yaml", (later, later))  # the sweep rewrote the point's config: other settings
    assert resume_checkpoint(run_dir) is None and point_state(tmp_path, point).state == INTERRUPTED
    # what runs record: the digest of the point.yaml they ran; a rewritten point.yaml (other settings) does not resume
    digest = config_digest(run_dir / "point.yaml")
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "slurm", "returncode": 143, "config_sha256": digest}))
    assert point_state(tmp_path, point, ("7_0", "TIMEOUT")).state == STOPPED  # killed by the scheduler's signal
    (run_dir / "point.yaml").write_text("trainer: {max_steps: 8}\n")
    assert resume_checkpoint(run_dir) is None
    assert point_state(tmp_path, point, ("7_0", "TIMEOUT")).state == FAILED


def test_a_local_run_after_a_slurm_submission_decides_the_points_state(tmp_path):
    """Stopped on SLURM (CANCELLED), then resumed and finished locally: finished, not stopped for ever."""
    point = {"index": 0, "name": "p", "run_dir": "p"}
    run_dir = tmp_path / "p"
    (run_dir / "adapter").mkdir(parents=True)
    (run_dir / "adapter" / "adapter_model.safetensors").write_bytes(b"x")
    (run_dir / "run_summary.json").write_text(json.dumps({"adapter_dir": str(run_dir / "adapter")}))
    (run_dir / "hpc_ckpt_1.ckpt").write_bytes(b"1")
    task = ("7_0", "CANCELLED", "2026-12-05T03:00:00+00:00")
    status = {"runner": "local", "returncode": 0, "started": "2026-12-05T04:00:00+00:00"}
    (run_dir / "sweep_status.json").write_text(json.dumps(status))
    assert point_state(tmp_path, point, task).state == FINISHED
    status["started"] = "2026-12-05T02:00:00+00:00"  # the local run came before the submission: SLURM's state holds
    (run_dir / "sweep_status.json").write_text(json.dumps(status))
    assert point_state(tmp_path, point, task).state == STOPPED


# ---- a local sweep -------------------------------------------------------------------------------------
# how the point of lr 1e30 fails while it runs (lr -1 is refused before a sweep runs: the first test above)
BAD_LR = "non-finite training loss (nan) at global step 1"


def test_local_sweep_runs_resumes_and_reports(tmp_path, tiny_model):
    model = tiny_model("llama")
    args = ["--config", DEMO, "--grid", f"{LR}=3e-3,1e30", "--seeds", "2", "--runs_dir", str(tmp_path),
            "--name", "lr", "--model.init_args.model_name_or_path", model, *TINY_RUN]
    first = sweep_cmd(*args, check=False)
    out = first.stdout
    assert first.returncode == 1, out + first.stderr  # a point failed; the sweep still ran every point
    sweep_dir = tmp_path / "lr"
    finished = ["lr=0.003-seed=0", "lr=0.003-seed=1"]
    failed = ["lr=1e+30-seed=0", "lr=1e+30-seed=1"]
    for name in finished:
        run_dir = sweep_dir / name
        assert f"{name} finished in" in out
        # everything the run writes lands in the point directory itself (the pinned run directory)
        for produced in ("config.yaml", "metrics.csv", "run_summary.json", "before_after.json", "log.txt",
                         "adapter/adapter_model.safetensors"):
            assert (run_dir / produced).exists(), (produced, sorted(p.name for p in run_dir.iterdir()))
        assert json.loads((run_dir / "run_summary.json").read_text())["global_step"] == 2
        assert json.loads((run_dir / "sweep_status.json").read_text())["returncode"] == 0
    for name in failed:
        assert f"{name} FAILED (exit status 1)" in out and BAD_LR in out
        said = out.splitlines()
        at = next(i for i, line in enumerate(said) if f"{name} FAILED" in line)
        assert said[at + 1].strip().startswith(f"lit-lora: NonFiniteTrainingError: {BAD_LR}"), said[at:at + 8]
    seed1 = yaml.safe_load((sweep_dir / "lr=0.003-seed=1" / "config.yaml").read_text())
    assert seed1["seed_everything"] == 1

    rows = list(csv.DictReader((sweep_dir / "report.csv").open()))
    points = json.loads((sweep_dir / "sweep.json").read_text())["points"]
    assert [r["point"] for r in rows] == [p["name"] for p in points]
    assert {r["point"]: r["state"] for r in rows} == {**dict.fromkeys(finished, "finished"),
                                                      **dict.fromkeys(failed, "failed")}
    for row in rows:
        if row["state"] == "finished":
            assert float(row["tuned_val_loss"]) > 0 and float(row["val_loss"]) > 0 and int(row["trainable_params"]) > 0
            assert float(row["wall_time_s"]) > 0 and float(row["peak_memory_mib"]) > 0 and row["lr"] == "0.003"
    report = (sweep_dir / "report.md").read_text()
    assert "## Mean ± std over seeds" in report and "| lr=0.003 | 2 |" in report
    assert "★" in report
    assert "### lr=1e+30-seed=0: failed (exit status 1)" in report and BAD_LR in report
    assert "(plots/vs_lr.png)" not in report  # one finished value of lr: nothing to plot against
    adapter = sweep_dir / "lr=0.003-seed=0" / "adapter" / "adapter_model.safetensors"
    trained_at = adapter.stat().st_mtime_ns

    # rerun: finished points are skipped, failed ones start again (the earlier attempt kept)
    second = sweep_cmd(*args, check=False)
    assert second.returncode == 1
    for name in finished:
        assert f"{name} finished earlier, skipped" in second.stdout
    assert adapter.stat().st_mtime_ns == trained_at
    for name in failed:
        assert f"{name}: the earlier attempt (failed) moved to" in second.stdout
        assert BAD_LR in (sweep_dir / name / "attempts" / "1" / "log.txt").read_text()
        assert BAD_LR in (sweep_dir / name / "log.txt").read_text()

    # adding a value extends the same sweep: only the new point trains (and the failed one retries); a plot appears
    args[args.index(f"{LR}=3e-3,1e30")] = f"{LR}=3e-3,1e30,1e-2"
    args[args.index("--seeds") + 1] = "1"
    third = sweep_cmd(*args, check=False)
    assert "lr=0.01-seed=0 finished in" in third.stdout and "lr=0.003-seed=0 finished earlier, skipped" in third.stdout
    sweep = json.loads((sweep_dir / "sweep.json").read_text())
    assert [p["name"] for p in sweep["points"]] == [*finished, *failed, "lr=0.01-seed=0"]
    assert len(list(csv.DictReader((sweep_dir / "report.csv").open()))) == len(sweep["points"]) == 5
    assert "(plots/vs_lr.png)" in (sweep_dir / "report.md").read_text()
    assert (sweep_dir / "plots" / "vs_lr.png").stat().st_size > 0

    report_out = sweep_cmd("report", str(sweep_dir)).stdout
    assert "report.md" in report_out and "lr=1e+30-seed=0: failed (exit status 1)" in report_out

    # the same settings spelled otherwise resolve to the same point configs: accepted
    at = args.index("--trainer.max_steps")
    respelled = [*args[:at], "--trainer.max_steps=2", *args[at + 2:]]
    assert sweep_cmd(*respelled, "--dry_run").returncode == 0

    # other base overrides once points finished: refused (a dry run too), sweep.json untouched
    before = (sweep_dir / "sweep.json").read_text()
    changed = sweep_cmd(*args, "--trainer.max_steps", "50", "--dry_run", check=False)
    assert changed.returncode != 0 and "give it another --name" in changed.stderr, changed.stderr
    assert "would change:\n  trainer.max_steps: 2 -> 50" in changed.stderr, changed.stderr  # what differs, named
    assert (sweep_dir / "sweep.json").read_text() == before


def test_a_stopped_point_resumes_from_its_checkpoint_instead_of_starting_again(tmp_path, tiny_model):
    """What a cancelled SLURM task leaves (a Lightning checkpoint as ``hpc_ckpt_1.ckpt`` at step 2 of 4, exit
    status 0, its log), rerun locally: the point continues from step 2 in place (``--ckpt_path``), its log kept."""
    args = ["--config", DEMO, "--grid", f"{LR}=3e-3", "--runs_dir", str(tmp_path / "runs"), "--name", "stop",
            "--model.init_args.model_name_or_path", tiny_model("llama"), *TINY_RUN]
    args[args.index("--trainer.max_steps") + 1] = "4"
    sweep_cmd(*args, "--dry_run")
    run_dir = tmp_path / "runs" / "stop" / "lr=0.003"
    elsewhere = tmp_path / "first-attempt"
    run_cli_subprocess(["fit", "--config", str(run_dir / "point.yaml"), "--trainer.max_steps", "2",
                        "--trainer.default_root_dir", str(elsewhere), "--trainer.logger.init_args.save_dir",
                        str(elsewhere)], via="module", timeout=600)
    (saved,) = (elsewhere / "checkpoints").glob("*step=2.ckpt")
    saved.replace(run_dir / "hpc_ckpt_1.ckpt")
    (run_dir / "sweep_status.json").write_text(json.dumps({"runner": "slurm", "job": "9_0", "returncode": 0,
                                                           "config_sha256": config_digest(run_dir / "point.yaml")}))
    (run_dir / "log.txt").write_text("[lit-lora] preemption: saved hpc_ckpt_1.ckpt at global step 2\n")

    out = sweep_cmd(*args).stdout
    assert f"lr=0.003 resuming from {run_dir / 'hpc_ckpt_1.ckpt'}" in out and "lr=0.003 finished in" in out, out
    assert not (run_dir / "attempts").exists()
    assert json.loads((run_dir / "run_summary.json").read_text())["global_step"] == 4
    log = (run_dir / "log.txt").read_text()
    assert log.startswith("[lit-lora] preemption: saved") and "2 steps after resuming at step 2" in log, log[-2000:]
    assert sweep_cmd(*args).stdout.count("finished earlier, skipped") == 1


# ---- lit-lora configs ----------------------------------------------------------------------------------
def run_main(*args: str) -> str:
    """``lit-lora <args>`` in this process (``harness.run_cli``); what it printed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        run_cli(args)
    return out.getvalue()


def test_configs_list_and_copy_give_configs_fit_accepts(tmp_path):
    from lit_lora.commands.configs import GROUPS, available, group_of, is_fragment
    from lit_lora.commands.experiment import print_config

    listing = run_main("configs", "list")
    assert run_main("configs") == listing  # a bare `lit-lora configs` lists them too
    names = list(available())
    assert "demo" in names and "nli/roberta_large_lora_multinli" in names and "loggers/wandb" in names
    assert "tutorials/nli_roberta_lora" in names and "code/gemma2b_qlora_python_codes" in names
    for name in names:
        assert name in listing
    assert "Demo: LoRA on a tiny Llama-architecture model" in listing  # the first header sentence
    described = [line.split(None, 1) for line in listing.splitlines() if line.startswith("  ")]
    assert all(len(d) == 2 and d[1].endswith(".") for d in described), described  # whole sentences, never cut
    # one heading a group, in GROUPS order, before its configs
    headings = [line.split()[0] for line in listing.splitlines() if line and not line.startswith(" ")]
    assert headings == [f"{g}/" if g else "configs/" for g in GROUPS if any(group_of(n) == g for n in names)]
    assert [group_of(n) for n in names] == sorted((group_of(n) for n in names), key=list(GROUPS).index)

    demo = tmp_path / "demo.yaml"
    run_main("configs", "copy", "demo", str(demo))
    assert demo.read_text() == (CONFIGS / "demo.yaml").read_text()
    with pytest.raises(SystemExit, match="exists; pass --force"):
        run_main("configs", "copy", "demo", str(demo))
    run_main("configs", "copy", "demo", str(demo), "--force")
    run_main("configs", "copy", "roberta_large_lora_multinli", str(tmp_path / "by_stem.yaml"))  # no group needed
    assert (tmp_path / "by_stem.yaml").read_text() == (CONFIGS / "nli" / "roberta_large_lora_multinli.yaml").read_text()
    for name in names:
        target = tmp_path / "copies"
        target.mkdir(exist_ok=True)
        said = run_main("configs", "copy", name, str(target) + "/")
        copy = target / (name.rsplit("/", 1)[-1] + ".yaml")
        assert copy.is_file()
        hint = said.split("run it with: ", 1)[1].strip()
        assert hint == (f"lit-lora fit --config <experiment>.yaml --config {copy}   (a fragment: it goes after a whole "
                        "config)" if is_fragment(name) else f"lit-lora fit --config {copy}"), hint
        # a fragment (logger, strategy) goes on top of a full config, as the README shows
        args = ["--config", str(demo), "--config", str(copy)] if is_fragment(name) else ["--config", str(copy)]
        printed = yaml.safe_load(print_config(args))
        assert printed["model"]["class_path"].startswith("lit_lora.models."), name
    with pytest.raises(SystemExit, match="did you mean demo"):
        run_main("configs", "copy", "dmeo")


def test_configs_ship_inside_the_package(tmp_path):
    """A wheel built from the repository holds every config as a file under lit_lora/configs/."""
    import shutil

    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(CONFIGS, src / "configs")
    shutil.copytree(REPO / "lit_lora", src / "lit_lora", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-c", f"from setuptools import build_meta; build_meta.build_wheel({str(dist)!r})"],
                   cwd=src, check=True, capture_output=True, timeout=300)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        packaged = {n.removeprefix("lit_lora/configs/"): zf.read(n) for n in zf.namelist()
                    if n.startswith("lit_lora/configs/") and n.endswith(".yaml")}
    repo = {p.relative_to(CONFIGS).as_posix(): p.read_bytes() for p in CONFIGS.rglob("*.yaml")}
    assert packaged == repo
    from lit_lora.commands.configs import GROUPS

    assert "demo.yaml" in packaged  # the top level, and every group folder `lit-lora configs list` names
    assert {name.split("/")[0] for name in packaged if "/" in name} == {group for group in GROUPS if group}


def test_a_report_without_metrics_says_why_instead_of_ranking_nothing():
    from lit_lora.sweep.report import points_lines

    row = {"point": "r=4", "run_dir": "r=4", "state": "finished", "labels": {"r": "4"}, "metrics": {}}
    text = "\n".join(points_lines([row], ["r"], []))
    assert "No point logged a validation or test metric" in text and "Best finished point" not in text
    assert "Best finished point" in "\n".join(points_lines([{**row, "metrics": {"val_loss": 1.0}}], ["r"],
                                                            ["val_loss"]))


def test_a_failed_points_console_line_is_its_error_not_the_traceback(tmp_path):
    from lit_lora.sweep.state import failure_lines

    log = tmp_path / "log.txt"
    log.write_text("step: 100%|####| 2/2\nTraceback (most recent call last):\n  File \"x.py\", line 1, in <module>\n"
                   "    raise ValueError('Invalid learning rate: -1.0')\nValueError: Invalid learning rate: -1.0\n")
    assert failure_lines(log) == "ValueError: Invalid learning rate: -1.0"
    log.write_text("[lit-lora] train: kept 20 of 20 rows\nlit-lora: CheckpointSettingsMismatch: --ckpt_path a.ckpt "
                   "was trained with other model settings\n"
                   "  model.init_args.adapter.init_args.r: config 4, checkpoint 16\n")
    assert failure_lines(log).splitlines()[1].strip().startswith("model.init_args.adapter")  # the listing follows
    log.write_text("".join(f"line {i}\n" for i in range(20)))  # killed: no error line, the tail
    assert failure_lines(log, 3) == "line 17\nline 18\nline 19"


def test_a_swept_key_no_points_class_accepts_is_an_error(tmp_path):
    """Under a swept class path a key one class lacks is left out of that point; a key every class lacks is a
    typo, and the sweep stops instead of running without that axis."""
    result = sweep_cmd("--config", DEMO, "--grid", f"{ADAPTER}=lit_lora.adapters.LoRA,lit_lora.adapters.FullFineTuning",
                       "--grid", f"{R[:-1]}rank=2,4", "--runs_dir", str(tmp_path), "--name", "typo", "--dry_run",
                       check=False)
    assert result.returncode != 0
    assert "no point's class accepts 'rank'" in result.stderr, result.stderr
    assert not (tmp_path / "typo").exists()  # refused before anything is written, the sweep's directory too


@pytest.mark.parametrize(("args", "message"), [
    (["--grid", "trainer.devices=1,2", "--slurm"], "trainer.devices comes from the SLURM allocation"),
    (["--grid", "model.init_args.optim.lr=1e-3,1e-4", "--trainer.num_nodes", "2", "--slurm"],
     "trainer.num_nodes comes from the SLURM allocation"),
    (["--grid", "trainer.default_root_dir=a,b"], "every point runs in its own directory"),
])
def test_settings_a_sweep_decides_itself_are_refused(args, message, tmp_path):
    """Under --slurm, slurm/launch.sh passes the allocation's devices and nodes after each point's config, so a
    swept trainer.devices would silently train every point alike."""
    result = sweep_cmd("--config", DEMO, "--runs_dir", str(tmp_path), "--name", "alloc", *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr


@pytest.mark.parametrize(("args", "message"), [
    ([f"--{LR}", "5e-4"], f"--{LR} 5e-4 would be dropped: --grid {LR}=… sets it in every point"),
    (["--model.optim.lr=5e-4"], f"--model.optim.lr 5e-4 would be dropped: --grid {LR}=…"),  # the short form
    (["--seeds", "2", "--seed_everything", "7"], "--seed_everything 7 and --seeds 2 both set the seed"),
])
def test_a_base_override_of_a_swept_key_is_refused_not_dropped(args, message, tmp_path):
    """Every point's grid value (or --seeds' seed) replaces a base override of the same key, so the base value
    would vanish from every point.yaml without a word while sweep.json still lists it."""
    result = sweep_cmd("--config", DEMO, "--grid", f"{LR}=1e-3,3e-3", "--runs_dir", str(tmp_path), "--name", "base",
                       "--dry_run", *args, check=False)
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert not (tmp_path / "base").exists()


def test_one_value_spelled_two_ways_is_refused_not_run_twice(tmp_path):
    """``1e-4`` and ``0.0001`` (``true`` / ``True``, ``1`` / ``1.0``) are one value to lit-lora fit: two points
    would train the same config under two names. Distinct values keep their names."""
    for spec, first, second in [(f"{LR}=1e-4,0.0001,1e-5", "1e-4", "0.0001"), ("x=true,True", "true", "True"),
                                ("x=1,1.0", "1", "1.0"), ("x=[q,v],[q, v]", "[q,v]", "[q, v]")]:
        with pytest.raises(ValueError, match=re.escape(f"{first} and {second} are the same value")):
            parse_axis(spec)
    assert [p.name for p in expand([parse_axis(f"{LR}=1e-4,1e-5"), parse_axis("x=1,true")])] == \
        ["lr=0.0001-x=1", "lr=0.0001-x=true", "lr=1e-05-x=1", "lr=1e-05-x=true"]
    refused = sweep_cmd("--config", DEMO, "--grid", f"{LR}=1e-4,0.0001", "--runs_dir", str(tmp_path), "--dry_run",
                        check=False)
    assert refused.returncode != 0 and "1e-4 and 0.0001 are the same value" in refused.stderr, refused.stderr
    # spellings only the parser tells apart (a class and its short name): the resolved configs are equal
    alias = sweep_cmd("--config", DEMO, "--grid", f"{ADAPTER}=LoRA,lit_lora.adapters.LoRA", "--runs_dir",
                      str(tmp_path), "--name", "alias", "--dry_run", check=False)
    assert alias.returncode != 0 and "resolve to the same config" in alias.stderr, alias.stderr
    assert not (tmp_path / "alias").exists()


def test_points_never_share_a_checkpoint_directory(tmp_path):
    """Each point's checkpoints (and the cleanup of its partial ones) are its own, in <point>/checkpoints:
    a checkpoint.dirpath from the command line or a config file would be one directory for every point."""
    common = ["--config", DEMO, "--grid", "model.init_args.adapter.init_args.use_rslora=false,true", "--runs_dir",
              str(tmp_path), "--name", "ckpt", "--dry_run"]
    given = sweep_cmd(*common, "--checkpoint.dirpath", "ckpts", check=False)
    assert given.returncode != 0 and "checkpoint.dirpath cannot be set" in given.stderr, given.stderr
    fragment = tmp_path / "ckpt.yaml"
    fragment.write_text("checkpoint:\n  dirpath: ckpts\n")
    configured = sweep_cmd(*common, "--config", str(fragment), check=False)
    assert configured.returncode != 0 and "checkpoint.dirpath cannot be set (the configs or overrides give " \
        "'ckpts')" in configured.stderr, configured.stderr
    assert not (tmp_path / "ckpt").exists()
    sweep_cmd(*common)  # unset: each point's run directory holds its checkpoints/
    point = yaml.safe_load((tmp_path / "ckpt" / "use_rslora=true" / "point.yaml").read_text())
    assert point["checkpoint"]["dirpath"] is None


def test_a_sweep_name_keeps_its_axes(tmp_path):
    """Rerunning with more values on the same axes adds points; another axis under the same --name would mix
    points the report cannot compare (their labels for the other axis would be missing)."""
    common = ["--config", DEMO, "--runs_dir", str(tmp_path), "--name", "s", "--dry_run"]
    sweep_cmd(*common, "--grid", f"{R}=2,4")
    sweep_cmd(*common, "--grid", f"{R}=2,4,8", "--trainer.max_steps", "3")  # nothing ran yet: new base is fine
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert [p["name"] for p in sweep["points"]] == ["r=2", "r=4", "r=8"] and sweep["base_args"][-1] == "3"
    refused = sweep_cmd(*common, "--grid", f"{LR}=1e-3", check=False)
    assert refused.returncode != 0 and "sweeps model.init_args.adapter.init_args.r; this command sweeps" in \
        refused.stderr, refused.stderr
    assert json.loads((tmp_path / "s" / "sweep.json").read_text())["axes"] == sweep["axes"]  # untouched


def test_a_slurm_option_before_slurm_is_named():
    result = sweep_cmd("--config", DEMO, "--grid", f"{R}=2,4", "--max_parallel", "2", "--slurm", check=False)
    assert result.returncode == 2 and "--max_parallel is an option of --slurm: put it after --slurm" in result.stderr


def test_a_test_of_a_sweep_point_writes_beside_its_run_not_over_it(tmp_path, tiny_model):
    """A point logs straight into its directory (pinned CSV logger, and W&B): ``lit-lora test`` on its
    config.yaml moves every such logger to ``<point>/test_0`` together, leaving the training run's files."""
    model = tiny_model("llama")
    sweep_cmd("--config", DEMO, "--config", str(CONFIGS / "loggers" / "wandb.yaml"), "--grid", f"{R}=4",
              "--runs_dir", str(tmp_path), "--name", "wb", "--model.init_args.model_name_or_path", model, *TINY_RUN)
    point = tmp_path / "wb" / "r=4"
    config, metrics = (point / "config.yaml").read_text(), (point / "metrics.csv").read_text()
    run_cli_subprocess(["test", "--config", str(point / "config.yaml"), "--trainer.enable_progress_bar", "false"],
                       cwd=tmp_path)
    assert (point / "config.yaml").read_text() == config and (point / "metrics.csv").read_text() == metrics
    assert (point / "test_0" / "metrics.json").is_file() and not (point / "metrics.json").exists()
    tested = yaml.safe_load((point / "test_0" / "config.yaml").read_text())
    assert {e["init_args"]["save_dir"] for e in tested["trainer"]["logger"]} == {str(point / "test_0")}
    # the sweep report reads the test beside the run (before, it read only <point>/metrics.json: no test_* column)
    tested_metrics = json.loads((point / "test_0" / "metrics.json").read_text())["metrics"]
    assert "test_loss" in tested_metrics and point_metrics(point)["test_loss"] == tested_metrics["test_loss"]
