"""What every benchmark contender measures inside its own process, the same way for every tool.

A contender calls ``StepMeter.step_begin`` once its step's batch is in hand (before the forward) and
``step_end`` after the optimizer step. The meter reports, as one JSON object written to ``$BENCH_RESULT``:

* ``tokens_per_s``: non-pad (real) tokens of the timed steps / their wall time. The timed window runs from
  the start of step ``warmup + 1`` (default: step 2, after the batch of that step was fetched) to the end of
  the last step, so model loading, tokenisation and the first step's one-off costs are excluded;
* ``padding``: pad slots / all slots over every batch of the run (packed and flattened batches included);
* ``peak_rss_mib``: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` at the end of the last step;
* ``launch_to_step1_s``: wall time from the process launch (``$BENCH_LAUNCH_TIME``, set by the parent right
  before it starts the process) to the end of the first optimizer step, and ``launch_to_step1_start_s`` to its
  start (imports, data and model set-up: what a tool costs before it computes anything; the first step's own
  work depends on its batch, e.g. length grouping puts the longest batch first); ``launch_to_end_s`` to the end of
  the last step (the whole run as its user waits for it, one-off costs such as ``torch.compile``'s included);
* ``loss``: the training loss at steps 1, 10 and the last step, as the tool itself reports it;
* ``step_seconds`` (CPU only): each step's wall time from ``step_begin`` to ``step_end``, to compare two
  contenders batch by batch where they train the same batches (e.g. ``lit-lora dropout`` and
  ``lit-lora compile dropout``);
* on CUDA, ``cuda_peak_allocated_gib`` / ``cuda_peak_reserved_gib`` (``torch.cuda.max_memory_*``).

Token counts stay tensors until the end (no device sync per step); CUDA timings synchronise at the window's ends.
"""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path
from typing import Any, Optional

import torch

LAUNCH_ENV = "BENCH_LAUNCH_TIME"
RESULT_ENV = "BENCH_RESULT"
WARMUP_ENV = "BENCH_WARMUP_STEPS"
IGNORE_INDEX = -100
LOSS_STEPS = (1, 10)  # and the last step
GIB = 1024 ** 3


def token_counts(batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(real tokens, slots) of a training batch, as 0-d tensors on the batch's device.

    Padded batches: real tokens are the ``attention_mask`` ones. Packed / flattened batches (``position_ids``
    and no mask): a sequence ends in padding when its last segment (positions restart at 0) has no label;
    a real row always has at least one label (its EOS), so only a pad block has none.
    """
    ids = batch["input_ids"]
    slots = torch.tensor(ids.numel(), device=ids.device)
    if batch.get("attention_mask") is not None:
        return batch["attention_mask"].sum(), slots
    positions, labels = batch.get("position_ids"), batch.get("labels")
    if positions is None or labels is None:
        return slots.clone(), slots
    length = positions.shape[-1]
    index = torch.arange(length, device=positions.device).expand_as(positions)
    last_start = torch.where(positions == 0, index, torch.zeros_like(index)).amax(dim=-1)  # (sequences,)
    tail = index >= last_start.unsqueeze(-1)
    tail_labelled = ((labels != IGNORE_INDEX) & tail).any(dim=-1)
    pad = torch.where(tail_labelled | (last_start == 0), torch.zeros_like(last_start), length - last_start)
    return slots - pad.sum(), slots


def label_count(batch: dict) -> Optional[torch.Tensor]:
    """Positions that carry a label (not ``IGNORE_INDEX``), as a 0-d tensor: the rows lit-lora's label-only head
    runs on (the first label of a row is always ignored, so this equals the count after the one-token shift)."""
    labels = batch.get("labels")
    return None if labels is None else (labels != IGNORE_INDEX).sum()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def launch_time() -> Optional[float]:
    value = os.environ.get(LAUNCH_ENV)
    return float(value) if value else None


def as_float(value: Any) -> Optional[float]:
    if value is None:
        return None
    return float(value.detach().float().cpu()) if isinstance(value, torch.Tensor) else float(value)


class StepMeter:
    """Times the steps of one training run and counts their tokens (steps are numbered from 1).

    Args:
        total_steps: The run's last optimizer step.
        warmup_steps: Steps left out of the timed window (default ``$BENCH_WARMUP_STEPS`` or 1).
        cuda: Synchronise CUDA at the ends of the timed window and report CUDA peak memory.
    """

    def __init__(self, total_steps: int, warmup_steps: Optional[int] = None, cuda: bool = False):
        self.total_steps = int(total_steps)
        self.warmup_steps = int(os.environ.get(WARMUP_ENV, 1) if warmup_steps is None else warmup_steps)
        self.cuda = cuda
        self.counts: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.labelled: dict[int, torch.Tensor] = {}
        self.losses: dict[int, Any] = {}
        self.begun: dict[int, float] = {}
        self.step_seconds: dict[int, float] = {}
        self.window_start: Optional[float] = None
        self.window_end: Optional[float] = None
        self.step1_start: Optional[float] = None
        self.step1_end: Optional[float] = None
        self.last_end: Optional[float] = None
        self.steps_done = 0

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def step_begin(self, step: int, counts: tuple[torch.Tensor, torch.Tensor],
                   labelled: Optional[torch.Tensor] = None) -> None:
        if step == 1:
            self.step1_start = time.time()
        if step == self.warmup_steps + 1:
            self._sync()
            self.window_start = time.perf_counter()
        self.counts[step] = counts
        self.begun[step] = time.perf_counter()
        if labelled is not None:
            self.labelled[step] = labelled

    def step_end(self, step: int, loss: Any = None) -> None:
        self.steps_done = max(self.steps_done, step)
        if step in self.begun and not self.cuda:  # on CUDA a per-step sync would slow what it times
            self.step_seconds[step] = time.perf_counter() - self.begun[step]
        if loss is not None and (step in LOSS_STEPS or step == self.total_steps):
            self.losses[step] = loss.detach() if isinstance(loss, torch.Tensor) else loss
        if step == 1:
            self._sync()
            self.step1_end = time.time()
        if step == self.total_steps:
            self._sync()
            self.window_end = time.perf_counter()
            self.last_end = time.time()

    def record_loss(self, step: int, loss: Any) -> None:
        """A loss reported after ``step_end`` (e.g. by a logging hook)."""
        if step in LOSS_STEPS or step == self.total_steps:
            self.losses[step] = loss

    def result(self, **extra: Any) -> dict:
        real = {s: int(c[0]) for s, c in self.counts.items()}
        slots = {s: int(c[1]) for s, c in self.counts.items()}
        timed = [s for s in real if self.warmup_steps < s <= self.total_steps]
        seconds = (self.window_end - self.window_start) if self.window_end and self.window_start else None
        timed_tokens = sum(real[s] for s in timed)
        timed_labels = sum(int(self.labelled[s]) for s in timed) if all(s in self.labelled for s in timed) else None
        launched = launch_time()
        result = {
            "steps": self.steps_done,
            "timed_steps": f"{self.warmup_steps + 1}-{self.total_steps}" if timed else None,
            "timed_seconds": seconds,
            "timed_tokens": timed_tokens,
            "tokens_per_s": timed_tokens / seconds if seconds else None,
            "label_tokens_per_s": timed_labels / seconds if seconds and timed_labels is not None else None,
            "padding": 1 - sum(real.values()) / sum(slots.values()) if slots else None,
            "step1_tokens": real.get(1),
            "peak_rss_mib": peak_rss_mib(),
            "launch_to_step1_s": self.step1_end - launched if self.step1_end and launched else None,
            "launch_to_step1_start_s": self.step1_start - launched if self.step1_start and launched else None,
            "launch_to_end_s": self.last_end - launched if self.last_end and launched else None,
            "loss": {str(s): as_float(v) for s, v in sorted(self.losses.items())},
            "step_seconds": {str(s): round(v, 4) for s, v in sorted(self.step_seconds.items())},
        }
        if self.cuda:
            result["cuda_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
            result["cuda_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        return {**result, **extra}


def write_result(result: dict, path: Optional[str] = None) -> None:
    """Write the result to ``path`` (default ``$BENCH_RESULT``), or print it as one JSON line."""
    path = path or os.environ.get(RESULT_ENV)
    text = json.dumps(result, sort_keys=True)
    if path:
        Path(path).write_text(text + "\n")
    else:
        print(text, flush=True)
