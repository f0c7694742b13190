"""What a run directory holds, read from file names only (no Lightning, no torch: the sweep reads it cheaply).

    from lit_lora.cluster.run_files import holds_run, hpc_checkpoints
    holds_run("runs/demo/version_0")        # True once a fit wrote its config.yaml (or metrics / summary)
    run_of_checkpoint("runs/demo/version_0/checkpoints/last.ckpt")  # Path("runs/demo/version_0")
    output_dir("compare", None, Path("runs/demo/version_0/compare"), ("report.json",))  # …/compare_1 if taken
    hpc_checkpoints("runs/tiny/4711")       # [Path(".../hpc_ckpt_1.ckpt"), …], oldest first

One definition of "a run lives here", shared by the checks that must not overwrite a run
(``launch_checks``), the evaluation that writes beside one (``run_dir.evaluation_dirs``), a resumed fit that
continues one (``csv_history.continued_run``), ``compare`` looking for one above a checkpoint, and the sweep
deciding whether a stopped point resumes.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional, Union

# what a run leaves in its run directory: a fresh run there would overwrite or truncate it (a W&B run's id: the
# fresh run would log its steps into that W&B run again)
RUN_OUTPUTS = ("config.yaml", "hparams.yaml", "metrics.csv", "checkpoints", "adapter", "run_summary.json",
               "wandb_run_id")
# files that only a run writes at its top level (an adapter or checkpoints directory alone may be an export)
RUN_MARKERS = ("config.yaml", "metrics.csv", "run_summary.json")
# written at setup, before the first step: alone, they are a run that stopped before it trained or logged anything
# (a W&B run has started by then and left its wandb_run_id, so it stays protected)
SETUP_FILES = ("config.yaml", "hparams.yaml")


def holds_run(directory: Union[str, Path]) -> bool:
    """A training run wrote into ``directory``: its ``config.yaml``, ``metrics.csv`` or ``run_summary.json``."""
    directory = Path(directory)
    return any((directory / name).is_file() for name in RUN_MARKERS)


def run_of_checkpoint(path: Union[str, Path]) -> Optional[Path]:
    """The run directory a checkpoint or adapter was saved in: the nearest of its parents that holds a run
    (``<run>/checkpoints/x.ckpt``, a DeepSpeed checkpoint directory's files, or a ``checkpoint.dirpath`` a
    few levels down); None when none of the four nearest does."""
    return next((parent for parent in list(Path(path).parents)[:4] if holds_run(parent)), None)


def output_dir(command: str, given: Optional[str], default: Path, results: tuple[str, ...]) -> Path:
    """Where an evaluation writes: ``given`` (``--out_dir``), refused when it holds an earlier result (a file
    matching a glob of ``results``); by default ``default``, or ``default_N`` (the first free N) when an earlier
    evaluation is there, so a second one never replaces or mixes with the first one's files."""
    if given is not None:
        path = Path(given)
        if any(any(path.glob(pattern)) for pattern in results):
            raise SystemExit(f"lit-lora {command}: {path} holds an earlier evaluation ({', '.join(results)}): "
                             "pass another --out_dir or move it away")
        return path
    path, n = default, 0
    while path.exists() and any(path.iterdir()):
        n += 1
        path = default.with_name(f"{default.name}_{n}")
    return path


def hpc_checkpoints(root: Union[str, Path]) -> list[Path]:
    """``hpc_ckpt_N.ckpt`` files in ``root`` (what Lightning's SLURM auto-resume looks for), oldest first."""
    found = [p for p in Path(root).glob("hpc_ckpt_*.ckpt") if re.fullmatch(r"hpc_ckpt_\d+\.ckpt", p.name)]
    return sorted(found, key=lambda p: int(re.sub(r"\D", "", p.name)))


def discard_setup_only(run_dir: Union[str, Path]) -> bool:
    """Remove what a run that stopped before its first step left in ``run_dir``, when that is ``SETUP_FILES`` or
    nothing: the files, and the directory where Lightning or ``run_dir.evaluation_dirs`` numbered it
    (``version_N``, ``test_N``, ``validate_N``), so the next run takes the number. Returns whether anything went."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not {p.name for p in run_dir.iterdir()} <= set(SETUP_FILES):
        return False
    for name in SETUP_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if re.fullmatch(r"(version|test|validate)_\d+", run_dir.name):
        run_dir.rmdir()
    return True


def earlier_run_outputs(run_dir: Union[str, Path]) -> list[str]:
    """What an earlier run left in ``run_dir`` (its config, metrics, checkpoints, adapter), by name; nothing when
    it left only ``SETUP_FILES`` (it failed before training, e.g. on a bad setting: a rerun replaces them)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [name for name in RUN_OUTPUTS if (run_dir / name).exists()]
    found += [p.name for p in hpc_checkpoints(run_dir)]
    return [] if set(found) <= set(SETUP_FILES) else found
