"""``lit-lora sweep``: one config, a grid of settings (and seeds), one run per point, one report.

    lit-lora sweep --config configs/demo.yaml --grid model.init_args.adapter.init_args.r=4,16 \
        --grid model.init_args.optim.lr=1e-3,3e-3 --seeds 2 --trainer.max_steps 50
    lit-lora sweep --config configs/demo.yaml --grid model.init_args.adapter.init_args.r=4,16 \
        --slurm --partition debug --max_parallel 2      # one SLURM job array; everything after --slurm is for sbatch
    lit-lora sweep report runs/demo                     # runs/demo/report.md, report.csv, plots/

This module reads the options and runs the steps; the sweep itself is ``lit_lora.sweep``: ``grid`` expands the
grid and names the points, ``resolve`` writes each point's config with lit-lora's own parser (handed in here:
``lit_lora.commands.experiment.print_config``), ``run`` runs them (locally one after another, or as a SLURM
job array through ``slurm/launch.sh``), ``state`` tells which finished, and ``report`` collects their metrics.
See docs/sweeps.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from lit_lora.commands.experiment import print_config
from lit_lora.sweep.report import LOG_LINES, build_report, write_report
from lit_lora.sweep.run import DEFAULT_SCRIPT, run_local, say, submit, write_sweep
from lit_lora.sweep.state import FAILED, FINISHED, INTERRUPTED, POINT_CONFIG, POINTS_FILE, STOPPED, point_state, \
    slurm_tasks


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """The sweep's own options, and the rest: base overrides given to every point."""
    parser = argparse.ArgumentParser(
        prog="lit-lora sweep", allow_abbrev=False,
        description="one config, a grid of settings (and seeds), one run per point, one report",
        epilog="Other arguments (--model.…, --trainer.…, --data.…) are given to every point as to lit-lora fit. "
               "--slurm comes last: what follows it goes to sbatch, except --max_parallel K (at most K array tasks "
               f"at a time) and --script PATH (default {DEFAULT_SCRIPT}). `lit-lora sweep report DIR` writes the "
               "report of a sweep directory.")
    parser.add_argument("--config", action="append", required=True, help="base config (repeat for fragments)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,…",
                        help="a swept config key (dotted, as lit-lora fit takes it) and its values; repeat per key")
    parser.add_argument("--seeds", type=int, help="add seed_everything 0 … N-1 as an axis")
    parser.add_argument("--name", help="sweep name (default: the first config's file name)")
    parser.add_argument("--runs_dir", default="runs", help="the sweep goes to <runs_dir>/<name>/")
    parser.add_argument("--dry_run", action="store_true", help="write the configs and sweep.json only; run nothing")
    argv, slurm = list(argv), None
    if "--slurm" in argv:
        cut = argv.index("--slurm")
        argv, slurm = argv[:cut], argv[cut + 1:]
    args, rest = parser.parse_known_args(argv)
    misplaced = [a for a in rest if a.split("=", 1)[0] in ("--max_parallel", "--script")]
    if misplaced:
        parser.error(f"{misplaced[0].split('=', 1)[0]} is an option of --slurm: put it after --slurm")
    if rest and not rest[0].startswith("--"):
        parser.error(f"unexpected argument {rest[0]!r} (base overrides are --KEY VALUE pairs)")
    missing = [c for c in args.config if not Path(c).is_file()]
    if missing:  # as fit says it (status 2), not as every point's refusal
        parser.error(f"--config {missing[0]}: " + ("a directory, not a config file" if Path(missing[0]).is_dir()
                                                    else "no such file"))
    args.slurm = slurm is not None
    args.max_parallel, args.script, args.sbatch = None, DEFAULT_SCRIPT, []
    if slurm is not None:
        slurm_parser = argparse.ArgumentParser(prog="lit-lora sweep … --slurm", allow_abbrev=False, add_help=False)
        slurm_parser.add_argument("--max_parallel", type=int)
        slurm_parser.add_argument("--script", default=DEFAULT_SCRIPT)
        known, args.sbatch = slurm_parser.parse_known_args(slurm)
        args.max_parallel, args.script = known.max_parallel, known.script
        if args.max_parallel is not None and args.max_parallel < 1:
            parser.error("--max_parallel must be 1 or more")
    return args, rest


def sweep(argv: list[str]) -> int:
    """Write the sweep, then run it here (the report after) or submit it; the exit status."""
    args, base_args = parse_args(argv)
    try:
        sweep_dir, data, points = write_sweep(args, base_args, print_config)
    except ValueError as err:
        raise SystemExit(f"lit-lora sweep: {err}")
    name = data["name"]
    skipped = sum(len(p["not_applicable"]) > 0 for p in points)
    say(name, f"{len(points)} point(s) in {sweep_dir} (sweep.json, {POINTS_FILE}, <point>/{POINT_CONFIG})"
              + (f"; {skipped} without a swept key their class does not accept" if skipped else ""))
    if args.dry_run:
        for point in points:
            print(f"  {point['index']:>3}  {point['name']:<40} {sweep_dir / point['config']}")
        return 0
    if args.slurm:
        return submit(sweep_dir, data, points, args)
    failed = run_local(sweep_dir, data, points)
    md, csv_path = write_report(sweep_dir)
    tasks = slurm_tasks(data) if data.get("slurm") else {}
    counts: dict[str, int] = {}
    for point in points:
        state = point_state(sweep_dir, point, tasks.get(point["index"])).state
        counts[state] = counts.get(state, 0) + 1
    summary = ", ".join(f"{n} {s.upper() if s == FAILED else s}" for s, n in counts.items())
    say(name, f"{summary}; report: {md}, {csv_path}")
    return 1 if failed or counts.get(FAILED) or counts.get(INTERRUPTED) or counts.get(STOPPED) else 0


def report(argv: list[str]) -> None:
    """``lit-lora sweep report DIR``: write and summarise the report of a sweep directory."""
    parser = argparse.ArgumentParser(prog="lit-lora sweep report", description="every point's metrics in one table")
    parser.add_argument("sweep_dir", help="a sweep directory (runs/<sweep>, holding sweep.json)")
    parser.add_argument("--log_lines", type=int, default=LOG_LINES, help="log lines shown per unfinished point")
    args = parser.parse_args(argv)
    try:
        built = build_report(args.sweep_dir, args.log_lines)
    except FileNotFoundError as err:
        raise SystemExit(f"lit-lora sweep report: {err}")
    rows = built["rows"]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    plots = built["plots"]
    print(f"[lit-lora] sweep {built['sweep']['name']}: {len(rows)} points ("
          + ", ".join(f"{n} {s}" for s, n in counts.items()) + f"); wrote {built['md']}, {built['csv']}"
          + (f" and {', '.join(str(p) for p in plots)}" if plots else ""))
    for row in rows:
        if row["state"] != FINISHED:
            print(f"  {row['point']}: {row['state']}" + (f" ({row['detail']})" if row["detail"] else "")
                  + (f"; log: {row['log']}" if row["log"] else ""))


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "report":
        report(argv[1:])
        return
    code = sweep(argv)
    if code:
        raise SystemExit(code)
