"""A resumed job continues its W&B run without logging the steps the run already holds a second time.

Each job is a ``WandbRun`` on the same run directory, as a requeued SLURM job (or ``fit --ckpt_path`` after a
crash) builds it; the history is read back from wandb's own offline run files, one per job.
"""

import json
import struct
import time
from pathlib import Path

import pytest

from lit_lora.cluster.tracking import WandbRun


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_SERVICE", raising=False)  # a finished in-process service is not inherited


def records(path: Path) -> list:
    """The protobuf records written so far to a ``run-<id>.wandb`` file (7-byte chunk headers in 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    data, pos, out, buf = path.read_bytes(), 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf, pos = buf + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def run_records(run_dir: Path, run_id: str, jobs: int) -> list:
    """Every record of the run's offline files once all ``jobs`` wrote their exit record: wandb's service writes
    them after ``finish()`` returns; a job started in the same second as the one before gets ``…-<id>-1``."""
    for _ in range(200):
        found = [r for path in sorted(run_dir.glob(f"wandb/offline-run-*-{run_id}*/run-{run_id}.wandb"))
                 for r in records(path)]
        if sum(r.WhichOneof("record_type") == "exit" for r in found) >= jobs:
            return found
        time.sleep(0.1)
    raise AssertionError(f"{run_dir}: the offline files of run {run_id} never got {jobs} exit records")


def logged(run_dir: Path, run_id: str, jobs: int) -> list[tuple[str, int]]:
    """(metric, trainer/global_step) of every history value of the run, over all its ``jobs``' offline runs."""
    pairs = []
    for record in run_records(run_dir, run_id, jobs):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {item.key or ".".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
        step = row.pop("trainer/global_step", None)
        keys = [key for key in row if not key.startswith("_")]  # wandb's own rows hold _runtime … only
        assert step is not None or not keys, row
        pairs += [(key, step) for key in keys]
    return pairs


def job(run_dir: Path, steps: range, stop_at: int | None = None) -> str:
    """One job: the training row of each step; ``stop_at``: the learning rate of that step, then a preemption."""
    logger = WandbRun(save_dir=str(run_dir))
    for step in steps:
        logger.log_metrics({"lr": 0.1 * step}, step=step)  # LearningRateMonitor, at the batch start
        logger.log_metrics({"train_loss": 10.0 - step}, step=step)
    if stop_at is not None:
        logger.log_metrics({"lr": 0.1 * stop_at}, step=stop_at)  # logged before the job stops at that batch
    run_id = logger.experiment.id
    logger.experiment.finish()
    return run_id


def test_a_resumed_job_logs_each_step_of_its_run_once(tmp_path):
    first = job(tmp_path, range(0, 5), stop_at=5)  # checkpointed after step 2, stopped at step 5's start
    second = job(tmp_path, range(2, 7))  # resumed from the checkpoint: steps 2-4 and step 5's lr again
    assert second == first  # the same W&B run
    pairs = logged(tmp_path, first, jobs=2)
    assert len(pairs) == len(set(pairs)), sorted(p for p in pairs if pairs.count(p) > 1)
    assert set(pairs) == {(key, step) for key in ("lr", "train_loss") for step in range(7)}


def test_a_new_run_in_the_directory_logs_every_step(tmp_path):
    first = job(tmp_path, range(0, 3))
    (tmp_path / "wandb_run_id").unlink()  # the run directory's next run is a new W&B run
    second = job(tmp_path, range(0, 2))
    assert second != first
    assert sorted(logged(tmp_path, second, jobs=1)) == [("lr", 0), ("lr", 1), ("train_loss", 0), ("train_loss", 1)]
