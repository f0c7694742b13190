"""Atomic checkpoint writes and the resumable train loader's position."""

import pytest
import torch

from lit_lora.data.resumable import ResumableDataLoader
from lit_lora.launch_checks import hpc_checkpoints
from lit_lora.preemption import AtomicCheckpointIO


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


class Progress:  # the part of the Trainer the loader reads
    def __init__(self):
        from types import SimpleNamespace

        self.fit_loop = SimpleNamespace(epoch_loop=SimpleNamespace(
            batch_progress=SimpleNamespace(current=SimpleNamespace(ready=0))))


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

    with pytest.raises(RuntimeError, match="same world size"):
        ResumableDataLoader(data, batch_size=4, seed=3, num_replicas=2, rank=0).load_state_dict(state)
