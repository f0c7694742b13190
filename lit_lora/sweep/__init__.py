"""``lit-lora sweep``: one config, a grid of settings (and seeds), one run per point, one report.

    lit-lora sweep --config configs/demo.yaml --grid model.init_args.adapter.init_args.r=4,16 \
        --grid model.init_args.optim.lr=1e-3,3e-3 --seeds 2 --trainer.max_steps 50
    lit-lora sweep --config configs/demo.yaml --grid model.init_args.adapter.init_args.r=4,16 \
        --slurm --partition debug --max_parallel 2      # one SLURM job array; everything after --slurm is for sbatch
    lit-lora sweep report runs/demo                     # runs/demo/report.md, report.csv, plots/

The command (its options, then these steps) is ``lit_lora.commands.sweep``. ``lit_lora.sweep.grid`` expands the
grid and names the points, ``lit_lora.sweep.resolve`` writes each point's config with lit-lora's own parser,
``lit_lora.sweep.run`` runs them (locally one after another, or as a
SLURM job array through ``slurm/launch.sh``), ``lit_lora.sweep.state`` tells which finished, and
``lit_lora.sweep.report`` collects their metrics. A command run again keeps the points it wrote before
(``lit_lora.sweep.known``), and two commands on one sweep take turns (``lit_lora.sweep.lock``). See docs/sweeps.md.
"""
