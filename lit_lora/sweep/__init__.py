"""``lit-lora sweep``: one config, a grid of settings (and seeds), one run per point, one report.

    lit-lora sweep --config configs/demo.yaml --grid model.init_args.adapter.init_args.r=4,16 \
        --grid model.init_args.optim.lr=1e-3,3e-3 --seeds 2 --trainer.max_steps 50
    lit-lora sweep --config configs/demo.yaml --grid model.init_args.adapter.init_args.r=4,16 \
        --slurm --partition debug --max_parallel 2      # one SLURM job array; everything after --slurm is for sbatch
    lit-lora sweep report runs/demo                     # runs/demo/report.md, report.csv, plots/

``lit_lora.sweep.grid`` expands the grid and names the points, ``lit_lora.sweep.resolve`` writes each point's
config with lit-lora's own parser, ``lit_lora.sweep.run`` runs them (locally one after another, or as a
SLURM job array through ``slurm/launch.sh``), ``lit_lora.sweep.state`` tells which finished, and
``lit_lora.sweep.report`` collects their metrics. See docs/sweeps.md.
"""

from __future__ import annotations

import sys
from typing import Optional


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "report":
        from lit_lora.sweep.report import main as report_main

        report_main(argv[1:])
        return
    from lit_lora.sweep.run import main as run_main

    run_main(argv)
