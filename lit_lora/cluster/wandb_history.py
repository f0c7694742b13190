"""Which steps a W&B run already holds, so that a resumed job does not log them a second time.

A job resumed from a checkpoint (a SLURM requeue, or ``fit --ckpt_path`` after a crash) trains again the steps
between that checkpoint and where the earlier job stopped, and continues the same W&B run (the run id is kept in
the run directory). Lightning hands those steps to wandb again, which adds them as new rows: every chart against
``trainer/global_step`` then holds two points for each repeated step (a loop back in the curve). ``LoggedSteps``
keeps, beside ``wandb_run_id``, the last step each metric was logged at; a metric the earlier jobs already
logged at a step is left out::

    steps = LoggedSteps(Path("runs/exp/123"), run_id="1a2b3c4d")
    steps.new({"train_loss": 2.1, "lr": 1e-3}, step=40)   # what the run does not hold yet at step 40
    steps.record({"train_loss": 2.1}, step=40)            # kept for the next job
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Mapping

log = logging.getLogger("lit_lora")

STEPS_FILE = "wandb_steps.json"


class LoggedSteps:
    """The last step each metric reached in one W&B run, across the jobs that continued it.

    Only the steps of earlier jobs are left out: this job's own metrics (``epoch`` on the training and the
    validation row of one step) always go through.
    """

    def __init__(self, save_dir: Path, run_id: str):
        self.path = Path(save_dir) / STEPS_FILE
        self.run_id = run_id
        self.earlier = self._read()  # what the jobs before this one logged
        self.last = dict(self.earlier)
        self._told = False

    def _read(self) -> dict[str, int]:
        """The file's steps when it belongs to this run (a new run in the directory starts empty)."""
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return {}
        if not isinstance(data, dict) or data.get("run_id") != self.run_id:
            return {}
        steps = data.get("steps")
        return {str(k): int(v) for k, v in steps.items()} if isinstance(steps, dict) else {}

    def new(self, metrics: Mapping[str, float], step: int) -> dict[str, float]:
        """The metrics of ``step`` that no earlier job logged at ``step`` or later."""
        kept = {k: v for k, v in metrics.items() if k not in self.earlier or step > self.earlier[k]}
        if len(kept) < len(metrics) and not self._told:
            self._told = True
            log.info("[lit-lora] W&B run %s already holds steps up to %d from before this job: steps it logged "
                     "are not logged again", self.run_id, max(self.earlier.values()))
        return kept

    def record(self, metrics: Mapping[str, float], step: int) -> None:
        """Keep ``step`` as the last of each metric, written atomically (a kill leaves the previous file)."""
        changed = False
        for key in metrics:
            if self.last.get(key, -1) < step:
                self.last[key] = step
                changed = True
        if not changed:
            return
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"run_id": self.run_id, "steps": self.last}))
        os.replace(tmp, self.path)
