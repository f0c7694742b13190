"""SLURM allocation vs Trainer settings, and the requeued-job-without-checkpoint guard."""

import re
import subprocess

import pytest
from harness import REPO

from lit_lora.cluster.launch_checks import AllocationMismatch, MissingResumeCheckpoint, check_allocation, \
    check_requeued_resume

SLURM = {"SLURM_JOB_ID": "42", "SLURM_JOB_NAME": "lit-lora", "SLURM_NTASKS": "4"}


def test_matching_allocation_passes_and_no_slurm_is_ignored():
    check_allocation(2, 2, {**SLURM, "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2"})
    check_allocation(2, 2, {**SLURM, "SLURM_NNODES": "2", "SLURM_TASKS_PER_NODE": "2(x2)"})
    check_allocation(1, 8, {})
    check_allocation(8, 8, {"TORCHELASTIC_RUN_ID": "1"})  # torchrun on every node
    check_allocation(2, 1, {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.1"})  # Lightning's own multi-node launch


def test_several_nodes_outside_any_launcher_are_refused_not_waited_for(tmp_path, monkeypatch):
    """A multi-node run's config.yaml given to ``lit-lora test`` on a login node: the Trainer would wait for nodes
    no launcher starts, forever (the printed ``next: lit-lora test`` of such a run adds --trainer.num_nodes 1)."""
    from harness import DEMO, cli_exit

    from lit_lora.cluster.launch_checks import LAUNCHER_VARIABLES

    for name in (*LAUNCHER_VARIABLES, "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AllocationMismatch, match=r"trainer.num_nodes=2, but no launcher started the other nodes"):
        check_allocation(2, 1, {})
    status, line = cli_exit(["test", "--config", DEMO, "--trainer.num_nodes", "2",
                             "--trainer.default_root_dir", str(tmp_path)])
    assert status == 1 and line.startswith("lit-lora: AllocationMismatch: trainer.num_nodes=2, but no launcher"), line


@pytest.mark.parametrize("nodes, devices, expected", [(1, 2, "num_nodes=1 but SLURM_NNODES=2"),
                                                       (2, 4, "devices=4 but 2 task")])
def test_mismatch_names_both_sides_and_the_fix(nodes, devices, expected):
    with pytest.raises(AllocationMismatch, match=expected) as error:
        check_allocation(nodes, devices, {**SLURM, "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "2"})
    assert "--ntasks-per-node" in str(error.value)


def test_fewer_tasks_than_nodes_times_tasks_per_node_is_a_mismatch():
    """``sbatch --ntasks=1 --ntasks-per-node=2`` starts one process; a Trainer expecting two would wait forever."""
    with pytest.raises(AllocationMismatch, match="2 processes but SLURM_NTASKS=1") as error:
        check_allocation(1, 2, {**SLURM, "SLURM_NTASKS": "1", "SLURM_NNODES": "1", "SLURM_NTASKS_PER_NODE": "2"})
    assert "drop --ntasks" in str(error.value) and "--trainer.devices 2" not in str(error.value)


def test_requeued_job_without_checkpoint_fails(tmp_path):
    env = {**SLURM, "SLURM_RESTART_COUNT": "1"}
    with pytest.raises(MissingResumeCheckpoint, match="SLURM_RESTART_COUNT=1"):
        check_requeued_resume(None, tmp_path, env)
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    check_requeued_resume(None, tmp_path, env)
    check_requeued_resume(None, tmp_path / "empty", {**SLURM, "SLURM_RESTART_COUNT": "0"})


def test_the_sbatch_log_folders_are_in_a_fresh_clone():
    """sbatch opens ``#SBATCH --output`` before the script runs and fails the job, with no log at all, when its
    folder is missing: each one the scripts name is tracked in git, so a fresh clone has it."""
    tracked = set(subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                                 check=True).stdout.split())
    folders = {match.rsplit("/", 1)[0] for script in (REPO / "slurm").glob("*.sbatch")
               for match in re.findall(r"^#SBATCH --(?:output|error)=(\S+)", script.read_text(), flags=re.M)}
    assert folders == {"runs"}, folders
    for folder in folders:
        assert any(path.startswith(f"{folder}/") for path in tracked), f"nothing tracked under {folder}/"


def test_what_counts_as_an_earlier_run_in_a_run_directory(tmp_path):
    """config.yaml alone is a run that stopped before its first step (a corrected rerun may go there); with a W&B
    run id, metrics, checkpoints or a preemption checkpoint beside it, the directory holds a run to protect."""
    from lit_lora.cluster.run_files import earlier_run_outputs

    assert earlier_run_outputs(tmp_path / "missing") == []
    (tmp_path / "config.yaml").write_text("x")
    (tmp_path / "hparams.yaml").write_text("x")
    assert earlier_run_outputs(tmp_path) == []
    (tmp_path / "wandb_run_id").write_text("abc")  # a W&B run that logged steps, with no CSV logger beside it
    assert earlier_run_outputs(tmp_path) == ["config.yaml", "hparams.yaml", "wandb_run_id"]
    (tmp_path / "wandb_run_id").unlink()
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"x")
    assert earlier_run_outputs(tmp_path) == ["config.yaml", "hparams.yaml", "hpc_ckpt_1.ckpt"]


def test_a_numbered_directory_with_setup_files_alone_is_removed_and_any_other_kept(tmp_path):
    from lit_lora.cluster.run_files import discard_setup_only

    for name in ("version_3", "test_0", "validate_2"):  # Lightning's and run_dir.evaluation_dirs' numbering
        (tmp_path / name).mkdir()
        (tmp_path / name / "hparams.yaml").write_text("x")
        assert discard_setup_only(tmp_path / name) and not (tmp_path / name).exists()
    (tmp_path / "my_run").mkdir()  # a directory the user named stays, emptied of the setup files
    (tmp_path / "my_run" / "config.yaml").write_text("x")
    assert discard_setup_only(tmp_path / "my_run") and list((tmp_path / "my_run").iterdir()) == []
    (tmp_path / "test_1").mkdir()
    (tmp_path / "test_1" / "metrics.csv").write_text("x")  # what the run wrote stays
    assert not discard_setup_only(tmp_path / "test_1") and (tmp_path / "test_1" / "metrics.csv").exists()


def test_a_checkpoints_run_is_its_nearest_parent_holding_one_and_the_refusal_names_its_config(tmp_path):
    """``compare`` writes beside the run and a checkpoint of another module is answered with the run's own
    config.yaml, wherever ``checkpoint.dirpath`` put the file inside the run."""
    from lit_lora.ckpt_settings import other_module
    from lit_lora.cluster.run_files import run_of_checkpoint

    run = tmp_path / "runs" / "version_0"
    ckpt = run / "saved" / "by_step" / "step=4.ckpt"  # a checkpoint.dirpath two levels inside the run
    ckpt.parent.mkdir(parents=True)
    assert run_of_checkpoint(ckpt) is None  # nothing holds a run yet
    (run / "config.yaml").write_text("x")
    assert run_of_checkpoint(ckpt) == run
    deepspeed = run / "checkpoints" / "step=4.ckpt" / "checkpoint" / "mp_rank_00_model_states.pt"  # a directory
    assert run_of_checkpoint(deepspeed) == run
    message = str(other_module(str(ckpt), "a.Classifier", "a.CausalLM", "test"))
    assert message.endswith(f"(lit-lora test --config {run / 'config.yaml'} --ckpt_path {ckpt})")


def test_an_evaluation_never_writes_over_an_earlier_one(tmp_path):
    from lit_lora.cluster.run_files import output_dir

    default = tmp_path / "incontext"
    assert output_dir("incontext", None, default, ("incontext.json",)) == default  # missing or empty: used
    default.mkdir()
    assert output_dir("incontext", None, default, ("incontext.json",)) == default
    (default / "incontext.json").write_text("{}")
    assert output_dir("incontext", None, default, ("incontext.json",)) == tmp_path / "incontext_1"
    (tmp_path / "incontext_1").mkdir()
    (tmp_path / "incontext_1" / "predictions_0shot.jsonl").write_text("")
    assert output_dir("incontext", None, default, ("incontext.json",)) == tmp_path / "incontext_2"
    assert output_dir("incontext", str(tmp_path / "mine"), default, ("incontext.json",)) == tmp_path / "mine"
    with pytest.raises(SystemExit, match="incontext_1 holds an earlier evaluation"):
        output_dir("incontext", str(tmp_path / "incontext_1"), default, ("incontext.json", "predictions_*shot.jsonl"))


def test_an_error_before_the_logger_picked_a_version_creates_no_directory(tmp_path):
    """A fit that fails before Lightning's setup (its CSV logger has no version yet) leaves the root untouched:
    asking the logger whether it holds rows must not make it create ``lightning_logs/``."""
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from lit_lora.cluster.launch_checks import RunDirectoryCheck

    trainer = Trainer(logger=CSVLogger(tmp_path), enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False)
    trainer.state.fn = "fit"
    RunDirectoryCheck().on_exception(trainer, None, RuntimeError("before setup"))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("env, task", [
    (SLURM, True),
    ({**SLURM, "SLURM_JOB_NAME": "bash"}, False),         # srun --pty bash: a shell on the allocation
    ({**SLURM, "SLURM_JOB_NAME": "interactive"}, False),  # salloc
    ({"SLURM_JOB_ID": "42"}, False),                       # a job's environment without a task
])
def test_every_slurm_behaviour_agrees_on_what_a_slurm_task_is(env, task):
    """The allocation check, the early signal record and the run directory pinned to the job all use one test: a
    fit typed into an interactive shell on an allocation is not pinned (each run numbers its own directory)."""
    from jsonargparse import Namespace

    from lit_lora.cluster import early_signals
    from lit_lora.cluster.csv_history import pin_log_dir

    assert early_signals.under_slurm(env) is task
    trainer = Namespace(logger=None, default_root_dir="/tmp/x")
    pin_log_dir(trainer, env)
    assert (trainer.logger is not None) is task
    if task:
        with pytest.raises(AllocationMismatch):
            check_allocation(1, 1, {**env, "SLURM_NNODES": "2"})
    else:
        check_allocation(1, 1, {**env, "SLURM_NNODES": "2"})  # not a task: nothing to check
