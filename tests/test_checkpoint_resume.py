"""Atomic checkpoint writes and the resumable train loader's position."""

import os
import stat

import fsspec
import pytest
import torch
from harness import DEMO, build_cli

from lit_lora.ckpt_settings import CheckpointSettingsMismatch
from lit_lora.cluster.checkpoint_io import AtomicCheckpointIO
from lit_lora.cluster.launch_checks import hpc_checkpoints
from lit_lora.data.resumable import ResumableDataLoader, optimizer_step_windows


def test_a_kill_during_save_leaves_no_checkpoint_that_resume_would_pick(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, tmp_path / "hpc_ckpt_1.ckpt")

    def dies_midway(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt  # stands in for the SIGKILL that follows a missed deadline

    monkeypatch.setattr(torch, "save", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"step": 2}, tmp_path / "hpc_ckpt_2.ckpt")
    assert [p.name for p in hpc_checkpoints(tmp_path)] == ["hpc_ckpt_1.ckpt"]
    assert not any("hpc_ckpt_" in p.name for p in tmp_path.iterdir() if p.name != "hpc_ckpt_1.ckpt")
    monkeypatch.undo()
    assert torch.load(tmp_path / "hpc_ckpt_1.ckpt")["step"] == 1


@pytest.mark.parametrize("umask", [0o022, 0o002], ids=["umask-022", "umask-002"])
def test_an_atomic_checkpoint_gets_the_mode_a_plain_open_gives(tmp_path, umask):
    """Group members of a shared run directory read the checkpoints as they read any other file (not mkstemp's 0600)."""
    previous = os.umask(umask)
    try:
        (tmp_path / "plain").write_bytes(b"")
        AtomicCheckpointIO().save_checkpoint({"step": 1}, tmp_path / "atomic.ckpt")
    finally:
        os.umask(previous)
    modes = {stat.S_IMODE((tmp_path / name).stat().st_mode) for name in ("plain", "atomic.ckpt")}
    assert modes == {0o666 & ~umask}


def test_a_remote_checkpoint_is_written_to_its_filesystem_not_the_local_disk(tmp_path, monkeypatch):
    """``memory://`` stands in for ``s3://``: ``Path`` would have made it ``memory:/...``, a local directory."""
    monkeypatch.chdir(tmp_path)
    remote = fsspec.filesystem("memory")
    try:
        AtomicCheckpointIO().save_checkpoint({"step": 3}, "memory://lit-lora-bucket/run/last.ckpt")
        assert list(tmp_path.iterdir()) == []
        with remote.open("/lit-lora-bucket/run/last.ckpt", "rb") as f:
            assert torch.load(f)["step"] == 3
    finally:
        if remote.exists("/lit-lora-bucket"):  # the memory filesystem is shared by the whole process
            remote.rm("/lit-lora-bucket", recursive=True)


class Progress:  # the part of the Trainer the loader reads
    def __init__(self):
        from types import SimpleNamespace

        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(
            batch_progress=SimpleNamespace(current=SimpleNamespace(ready=0))))
        self.accumulate_grad_batches = 1  # optimizer-step windows of one batch
        self.num_training_batches = float("inf")


def test_restored_loader_continues_with_the_next_unseen_batch():
    data = list(range(40))
    full = ResumableDataLoader(data, batch_size=4, seed=3)
    full.sampler.set_epoch(1)
    expected = [b.tolist() for b in full]

    first = ResumableDataLoader(data, batch_size=4, seed=3)
    first.trainer = Progress()
    first.sampler.set_epoch(1)
    seen = [b.tolist() for _, b in zip(range(3), first)]
    first.trainer.fit_loop.epoch_loop.batch_progress.current.ready = 3
    state = first.state_dict()

    resumed = ResumableDataLoader(data, batch_size=4, seed=3)
    resumed.load_state_dict(state)
    assert seen + [b.tolist() for b in resumed] == expected  # none repeated, none skipped
    assert [b.tolist() for b in resumed] == expected  # the skip applies to one iteration only

    with pytest.raises(CheckpointSettingsMismatch, match="same world size"):
        ResumableDataLoader(data, batch_size=4, seed=3, num_replicas=2, rank=0).load_state_dict(state)


def test_a_resume_at_an_epochs_end_may_change_the_world_size_and_batch_size():
    """Past an epoch's last batch the next epoch starts afresh: 1 rank → 2 or batch 4 → 8 continues with that
    epoch's whole order; the same change mid-epoch is refused, and another data.seed always is."""
    data = list(range(40))
    first = ResumableDataLoader(data, batch_size=4, seed=3)
    first.trainer = Progress()
    first.trainer.fit_loop.epoch_loop.batch_progress.current.ready = len(first)  # the epoch's last batch trained
    state = first.state_dict()
    assert state["epoch_batches"] == 10

    for changed in (dict(batch_size=4, num_replicas=2, rank=1), dict(batch_size=8)):
        fresh = ResumableDataLoader(data, seed=3, **changed)
        fresh.sampler.set_epoch(1)
        expected = [b.tolist() for b in fresh]
        resumed = ResumableDataLoader(data, seed=3, **changed)
        resumed.load_state_dict(state)
        resumed.sampler.set_epoch(1)  # as Lightning moves on to the next epoch
        assert [b.tolist() for b in resumed] == expected

    mid_epoch = {**state, "batches": 3}
    for changed, message in ((dict(batch_size=4, num_replicas=2), "same world size"), (dict(batch_size=8), "batch_size")):
        with pytest.raises(CheckpointSettingsMismatch, match=message):
            ResumableDataLoader(data, seed=3, **changed).load_state_dict(mid_epoch)
    with pytest.raises(CheckpointSettingsMismatch, match="same data.seed"):
        ResumableDataLoader(data, batch_size=4, seed=4).load_state_dict(state)


class OneProcess:  # the part of a Lightning strategy AtomicDirectorySave uses, for a single process
    is_global_zero = True

    def broadcast(self, obj):
        return obj

    def barrier(self, name=None):
        pass


def lightning_resume_version(directory):
    """The ``hpc_ckpt_N`` version Lightning's SLURM auto-resume would pick in ``directory``."""
    from lightning.pytorch.trainer.connectors.checkpoint_connector import _CheckpointConnector

    return _CheckpointConnector._CheckpointConnector__max_ckpt_version_in_folder(directory, "hpc_ckpt_")


def write_shards(checkpoint, path, storage_options=None):
    """Stands in for DeepSpeed's ``engine.save_checkpoint``: a directory of files written one by one."""
    (path / "checkpoint").mkdir(parents=True)
    for rank in range(2):
        (path / "checkpoint" / f"zero_pp_rank_{rank}_model_states.pt").write_text(str(checkpoint["step"]))
        if checkpoint.get("die_after_first_shard"):
            raise KeyboardInterrupt  # the SIGKILL that follows a missed deadline
    (path / "latest").write_text("checkpoint")


def test_a_kill_during_a_directory_save_leaves_no_checkpoint_that_resume_would_pick(tmp_path):
    from lit_lora.cluster.checkpoint_io import AtomicDirectorySave, remove_partial_checkpoints

    save = AtomicDirectorySave(write_shards, OneProcess())
    save({"step": 1}, tmp_path / "hpc_ckpt_1.ckpt")
    assert (tmp_path / "hpc_ckpt_1.ckpt" / "latest").is_file()
    with pytest.raises(KeyboardInterrupt):
        save({"step": 2, "die_after_first_shard": True}, tmp_path / "hpc_ckpt_2.ckpt")
    assert lightning_resume_version(tmp_path) == 1
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "hpc_ckpt_1.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].startswith(".partial-")
    assert [p.name for p in remove_partial_checkpoints(tmp_path)] == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["hpc_ckpt_1.ckpt"]


def test_a_directory_save_replaces_an_older_one_of_the_same_name(tmp_path):
    from lit_lora.cluster.checkpoint_io import AtomicDirectorySave

    save = AtomicDirectorySave(write_shards, OneProcess())
    save({"step": 1}, tmp_path / "last.ckpt")
    save({"step": 2}, tmp_path / "last.ckpt")
    assert (tmp_path / "last.ckpt" / "checkpoint" / "zero_pp_rank_1_model_states.pt").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_resume_checks_adapter_names_also_where_deepspeed_drops_the_state_dict(tiny_model):
    """DeepSpeed restores weights itself and passes Lightning a checkpoint without "state_dict"."""
    from lit_lora.adapters import LoRA
    from lit_lora.models import CausalLMModule

    def module(targets):
        m = CausalLMModule(tiny_model("llama"), adapter=LoRA(r=4, target_modules=targets))
        m.configure_model()
        return m

    saved_by = module(["q_proj", "v_proj"])
    checkpoint = {"state_dict": saved_by.state_dict()}
    saved_by.on_save_checkpoint(checkpoint)
    deepspeed_client_state = {k: v for k, v in checkpoint.items() if k != "state_dict"}

    module(["q_proj", "v_proj"]).on_load_checkpoint(deepspeed_client_state)
    module(["q_proj", "v_proj"]).on_load_checkpoint(checkpoint)
    for other in (checkpoint, deepspeed_client_state):
        with pytest.raises(RuntimeError, match="lacks .* trainable weights"):
            module("all-linear").on_load_checkpoint(other)


def test_a_checkpoint_without_the_trainable_weights_is_refused_when_written(tiny_model):
    """A state dict whose names did not match the trainable weights (FSDP's wrapped names) was cut to nothing and
    the resume started from the initial adapter; the rank that writes the checkpoint now stops instead."""
    from lit_lora.adapters import LoRA
    from lit_lora.models import CausalLMModule

    module = CausalLMModule(tiny_model("llama"), adapter=LoRA(r=4))
    module.configure_model()
    state = module.state_dict()
    renamed = {k.replace("layers.0.", "layers.0._fsdp_wrapped_module."): v for k, v in state.items()}
    kept = {"state_dict": dict(state)}
    module.on_save_checkpoint(kept)
    assert set(kept["state_dict"]) == module.trainable_state_keys() and kept["state_dict"]
    with pytest.raises(RuntimeError, match=r"lacks \d+ trainable weights \(first: model\.base_model\.\S+layers\.0"):
        module.on_save_checkpoint({"state_dict": renamed})
    with pytest.raises(RuntimeError, match="lacks"):
        module.on_save_checkpoint({"state_dict": {}})


def test_every_strategys_saves_are_made_atomic():
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    from lit_lora.cluster.checkpoint_io import AtomicDirectorySave
    from lit_lora.cluster.checkpoint_io import make_saves_atomic

    deepspeed = DeepSpeedStrategy(stage=3)
    make_saves_atomic(deepspeed)
    make_saves_atomic(deepspeed)  # a second call must not wrap twice
    assert isinstance(deepspeed.save_checkpoint, AtomicDirectorySave)
    assert not isinstance(deepspeed.save_checkpoint.save, AtomicDirectorySave)
    ddp = DDPStrategy()
    make_saves_atomic(ddp)
    assert isinstance(ddp.checkpoint_io, AtomicCheckpointIO)


def test_the_cli_installs_atomic_saves_and_the_runtime_callbacks_before_preemption(tiny_model, tmp_path):
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from lit_lora.cluster.checkpoint_io import PartialCheckpointCleanup
    from lit_lora.cluster.csv_history import CSVHistoryResume
    from lit_lora.cluster.launch_checks import RunDirectoryCheck
    from lit_lora.cluster.preemption import PreemptionCheckpoint

    def trainer(*extra):
        args = ["--config", DEMO, "--model.init_args.model_name_or_path", tiny_model("llama"),
                "--trainer.default_root_dir", str(tmp_path), *extra]
        return build_cli(args, run=False).trainer

    built = trainer("--preemption.start_fresh_if_no_checkpoint", "true")
    assert type(built.strategy.checkpoint_io) is AtomicCheckpointIO
    kinds = [type(c) for c in built.callbacks]
    order = [kinds.index(k) for k in (RunDirectoryCheck, PartialCheckpointCleanup, CSVHistoryResume,
                                      PreemptionCheckpoint)]
    assert order == sorted(order)  # the checks run before the preemption callback's setup, as before the split
    assert built.callbacks[order[0]].start_fresh_if_no_checkpoint
    assert type(trainer("--preemption.atomic", "false").strategy.checkpoint_io) is TorchCheckpointIO


def test_an_interrupted_replacement_gets_the_older_copy_back(tmp_path, monkeypatch):
    import os

    from lit_lora.cluster import checkpoint_io
    from lit_lora.cluster.checkpoint_io import AtomicDirectorySave, remove_partial_checkpoints

    save = AtomicDirectorySave(write_shards, OneProcess())
    save({"step": 1}, tmp_path / "last.ckpt")
    renames, real_replace = [], os.replace

    def killed_after_first_rename(src, dst):
        if renames:
            raise KeyboardInterrupt
        renames.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(checkpoint_io.os, "replace", killed_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save({"step": 2}, tmp_path / "last.ckpt")
    monkeypatch.undo()
    assert not (tmp_path / "last.ckpt").exists()
    remove_partial_checkpoints(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
    assert (tmp_path / "last.ckpt" / "checkpoint" / "zero_pp_rank_0_model_states.pt").read_text() == "1"


def test_batches_carry_the_labels_of_their_whole_optimizer_step():
    """Windows follow Lightning's accumulation: after batch indices k-1, 2k-1 … and the epoch's last batch,
    also when a resume starts inside a window."""
    batches = [{"labels": torch.tensor([i])} for i in range(10)]
    windows = [[int(l) for l in b["step_labels"]] for b in optimizer_step_windows(batches, accumulate=4)]
    assert windows == [[0, 1, 2, 3]] * 4 + [[4, 5, 6, 7]] * 4 + [[8, 9]] * 2
    resumed = [{"labels": torch.tensor([i])} for i in range(6, 10)]  # a resume at batch 6 of the epoch
    windows = [[int(l) for l in b["step_labels"]] for b in optimizer_step_windows(resumed, 4, first=6)]
    assert windows == [[6, 7]] * 2 + [[8, 9]] * 2
    limited = [[int(l) for l in b["step_labels"]] for b in optimizer_step_windows(batches, 4, limit=6)]
    assert limited[:6] == [[0, 1, 2, 3]] * 4 + [[4, 5]] * 2  # limit_train_batches ends the last step early


@pytest.mark.parametrize("changed", [("--data.init_args.max_length", "165"), ("--data.init_args.max_samples", "30"),
                                     ("--data.init_args.template", "plain")])
def test_a_mid_epoch_resume_on_other_training_rows_is_refused(tiny_model, tmp_path, changed):
    """Other rows under the same order and batch size would resume at the saved batch of another epoch: rows
    repeated or never seen, without a word. The loader's state records the rows (count, tokens, lengths)."""
    from harness import fit, resumable_demo_cli

    model_dir = tiny_model("llama")
    first = resumable_demo_cli(model_dir, tmp_path / "first", 1, 1)
    fit(first)
    ckpt = tmp_path / "first" / "checkpoints" / "step=1.ckpt"  # batch 1 of the epoch's 2
    same = resumable_demo_cli(model_dir, tmp_path / "same", 1, 2)
    fit(same, ckpt_path=str(ckpt))  # the same rows: resumes
    assert same.trainer.global_step == 2
    other = resumable_demo_cli(model_dir, tmp_path / "other", 1, 2, *changed)
    with pytest.raises(CheckpointSettingsMismatch, match="a mid-epoch resume needs the same training rows"):
        fit(other, ckpt_path=str(ckpt))
