"""``lit-lora sweep --config … --grid KEY=V1,V2 …``: write one config per point, then run them here or on SLURM.

    lit-lora sweep --config configs/demo.yaml --grid model.init_args.adapter.init_args.r=4,16 --seeds 2 \
        --trainer.max_steps 20 --trainer.val_check_interval 10
    # [lit-lora] sweep demo: 4 points in runs/demo (sweep.json, points.txt, <point>/point.yaml)
    # [lit-lora] sweep demo: 1/4 r=4-seed=0 finished in 35 s (val_loss 2.8721)
    # …
    # [lit-lora] sweep demo: 4 finished; report: runs/demo/report.md, runs/demo/report.csv
    lit-lora sweep … --slurm --partition debug --max_parallel 2   # one job array, at most 2 tasks at a time

Arguments other than the sweep's own (``--model.init_args.…``, ``--trainer.…``) are base overrides given
to every point, as ``lit-lora fit`` takes them. Locally each point runs as ``lit-lora fit --config
<point>/point.yaml`` in a subprocess (stdout and stderr to ``<point>/log.txt``), so a failing point does not
stop the sweep; the exit status is 1 when any point failed. Rerunning the same command resumes the sweep:
finished points (``lit_lora.sweep.state``) are skipped, a stopped point (cancelled, timed out or preempted
after its preemption checkpoint) resumes from that checkpoint, and a point that failed or was interrupted
starts again from step 0 in its own directory, the earlier attempt moved to ``<point>/attempts/N/``.

With ``--slurm``, every unfinished point that SLURM does not already run is submitted as ONE job array
(``sbatch --array=<indices>%<max_parallel> slurm/single_node.sbatch runs/<sweep>/points.txt``): array task N
reads line N of ``points.txt`` (``slurm/launch.sh``) and runs the usual ``srun lit-lora fit`` in the point's
directory, with the usual preemption checkpoint and requeue.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import yaml

from lit_lora.cli_links import canonical
from lit_lora.cluster.run_files import hpc_checkpoints
from lit_lora.sweep.grid import SEED_KEY, Point, axis_labels, expand, parse_axis, point_name, seed_axis
from lit_lora.sweep.known import keep_known_names, kept_text, stored_axis_order
from lit_lora.sweep.lock import sweep_lock
from lit_lora.sweep.point_checks import refused_values
from lit_lora.sweep.resolve import PointConfigError, PrintConfig, changed_settings, checkpoint_dirpath, config_yaml, \
    pin_run, resolve_point
from lit_lora.sweep.state import FINISHED, LOG_FILE, PENDING, POINT_CONFIG, POINTS_FILE, RUNNING, STATUS_FILE, \
    STOPPED, config_digest, failure_lines, load_sweep, move_earlier_attempt, point_state, save_sweep, slurm_tasks
from lit_lora.strict_json import dumps

DEFAULT_SCRIPT = "slurm/single_node.sbatch"


def say(sweep: str, message: str) -> None:
    print(f"[lit-lora] sweep {sweep}: {message}", flush=True)


def now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


# ---- the sweep directory ---------------------------------------------------------------------------
def resolve_points(points: list[Point], configs: list[str], base_args: list[str], sweep: str,
                   print_config: PrintConfig) -> list[tuple[Point, str]]:
    """Each point's resolved config text; a key its class does not accept is left out, duplicates then dropped.
    Two points with one config (two spellings of a value ``grid.parsed_value`` cannot tell apart, such as a class
    path and its short name) and a configured ``checkpoint.dirpath`` (shared by every point) are refused."""
    keys = list(points[0].overrides) if points else []
    label_of = axis_labels(keys)
    resolved, seen, texts = [], set(), {}
    for point in points:
        try:
            text, dropped = resolve_point(configs, base_args, point.overrides, print_config)
        except PointConfigError as err:
            raise SystemExit(f"lit-lora sweep {sweep}: point {point.name}: lit-lora fit refuses its arguments:\n{err}")
        refused = refused_values(yaml.safe_load(text))
        if refused:
            raise SystemExit(f"lit-lora sweep {sweep}: point {point.name}: lit-lora fit would refuse it: {refused}")
        dirpath = checkpoint_dirpath(text)
        if dirpath is not None:
            raise SystemExit(f"lit-lora sweep {sweep}: checkpoint.dirpath cannot be set (the configs or overrides give "
                             f"{dirpath!r}): {PINNED_KEYS['checkpoint.dirpath']}")
        if dropped:
            point.not_applicable = dropped
            point.overrides = {k: v for k, v in point.overrides.items() if k not in dropped}
            point.labels = {lab: v for lab, v in point.labels.items() if lab not in {label_of[k] for k in dropped}}
            point.name = point_name(point.labels)
        identity = tuple(sorted(point.overrides.items()))
        if identity in seen:
            continue
        if text in texts:
            raise SystemExit(f"lit-lora sweep {sweep}: points {texts[text]} and {point.name} resolve to the same "
                             "config (one value spelled two ways?): give each value once")
        seen.add(identity)
        texts[text] = point.name
        resolved.append((point, text))
    applied = {key for point, _ in resolved for key in point.overrides}
    for key in (k for k in keys if k not in applied):  # a misspelled key under a swept class path
        raise SystemExit(f"lit-lora sweep {sweep}: --grid {key}: no point's class accepts "
                         f"'{key.rsplit('.', 1)[1]}' (misspelled?), so no point would sweep it")
    return resolved


PINNED_KEYS = {"trainer.default_root_dir": "every point runs in its own directory under the sweep's",
               "checkpoint.dirpath": "every point keeps its checkpoints in its own <point>/checkpoints (points "
                                     "sharing one would overwrite and clean up each other's)"}
ALLOCATION_KEYS = ("trainer.devices", "trainer.num_nodes")


def base_values(base_args: list[str]) -> dict[str, str]:
    """``["--a", "1", "--b=2"]`` -> ``{"a": "1", "b": "2"}``."""
    values = {}
    for i, arg in enumerate(base_args):
        if arg.startswith("--"):
            key, eq, value = arg[2:].partition("=")
            values[key] = value if eq else " ".join(a for a in base_args[i + 1:i + 2] if not a.startswith("--"))
    return values


def check_given_keys(grid_keys: list[str], base_args: list[str], slurm: bool, seeds: Optional[int] = None) -> None:
    """Refuse settings a sweep decides itself: the run and checkpoint directories always, under ``--slurm`` the
    processes, which ``slurm/launch.sh`` takes from the allocation (every array task gets the same one), and a base
    override of a swept key, which every point's grid value would silently replace."""
    base = base_values(base_args)
    swept = {canonical(k): k for k in grid_keys}
    for key, value in base.items():
        if canonical(key) not in swept:
            continue
        if seeds and swept[canonical(key)] == SEED_KEY:
            raise SystemExit(f"lit-lora sweep: --{key} {value} and --seeds {seeds} both set the seed (--seeds runs "
                             f"{SEED_KEY} 0 … {seeds - 1}): give one of them")
        raise SystemExit(f"lit-lora sweep: --{key} {value} would be dropped: --grid {swept[canonical(key)]}=… sets "
                         "it in every point; give its values in --grid only")
    for key in sorted(set(grid_keys) | set(base)):
        if canonical(key) in PINNED_KEYS:
            raise SystemExit(f"lit-lora sweep: {key} cannot be set: {PINNED_KEYS[canonical(key)]}")
        if slurm and key in ALLOCATION_KEYS:
            raise SystemExit(f"lit-lora sweep --slurm: {key} comes from the SLURM allocation, the same for every "
                             "array task; give sbatch --nodes / --ntasks-per-node after --slurm instead")


def check_same_axes(sweep: dict, sweep_dir: Path, keys: list[str]) -> None:
    """Refuse other axes under an existing sweep name: adding values to the same axes adds points; another axis
    would mix points the report cannot compare."""
    if not sweep["points"]:
        return
    before = [a["key"] for a in sweep.get("axes", [])]
    if sorted(before) != sorted(keys):
        raise SystemExit(f"lit-lora sweep {sweep.get('name', sweep_dir.name)}: {sweep_dir} sweeps "
                         f"{', '.join(before) or 'nothing'}; this command sweeps {', '.join(keys) or 'nothing'}: "
                         "give it another --name")


def write_point_configs(sweep: dict, sweep_dir: Path, name: str, resolved: list[tuple[Point, str]]) -> list[dict]:
    """Every point's ``point.yaml`` and its ``sweep.json`` entry (new points get the next index); refused, before
    anything is written, when a finished or queued point's resolved config would change."""
    tasks = slurm_tasks(sweep) if sweep["slurm"] else {}
    known = {p["name"]: p for p in sweep["points"]}
    next_index = 1 + max((p["index"] for p in sweep["points"]), default=-1)
    current, changed, differ = [], [], []
    for point, text in resolved:
        entry = known.get(point.name)
        if entry is None:
            entry = {"index": next_index, "name": point.name}
            next_index += 1
            sweep["points"].append(entry)
            known[point.name] = entry
        run_dir = (sweep_dir / point.name).resolve()
        config = pin_run(text, run_dir, sweep=name, point=point.name)
        settings = ", ".join(f"{k}={v}" for k, v in point.overrides.items()) or "the base config"
        header = [f"lit-lora sweep {name}, point {point.name}: {settings}",
                  f"run alone: lit-lora fit --config {run_dir / POINT_CONFIG}"]
        text = config_yaml(config, header)
        path = run_dir / POINT_CONFIG
        previous = path.read_text() if path.is_file() else None
        text = kept_text(previous, text)
        if previous is not None and previous != text and "run_dir" in entry:
            state = point_state(sweep_dir, entry, tasks.get(entry["index"]))
            if state.state in (FINISHED, RUNNING, PENDING):
                changed.append(f"{point.name} ({state.state})")
                differ = differ or changed_settings(previous, text)
        entry.update({"overrides": point.overrides, "labels": point.labels, "not_applicable": point.not_applicable,
                      "config": f"{point.name}/{POINT_CONFIG}", "run_dir": point.name})
        current.append((entry, path, text, previous))
    if changed:  # the configs, base overrides or config files changed under points that ran with the old ones
        listing = "".join(f"\n  {line}" for line in differ)
        raise SystemExit(f"lit-lora sweep {name}: {', '.join(changed[:3])}{' …' if len(changed) > 3 else ''} ran "
                         "with other settings than this command gives (configs, base overrides or the config "
                         "files changed): give it another --name, or move those point directories away; "
                         f"{changed[0].split(' (')[0]}/point.yaml would change:{listing}")
    for entry, path, text, previous in current:
        if previous != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    return [entry for entry, *_ in current]


def write_sweep(args: argparse.Namespace, base_args: list[str],
                print_config: PrintConfig) -> tuple[Path, dict, list[dict]]:
    """Expand, resolve (``print_config``: see ``sweep.resolve``) and write ``sweep.json``, ``points.txt`` and every
    ``<point>/point.yaml``; ``args``: the sweep's options (``lit_lora.commands.sweep``)."""
    axes = [parse_axis(spec) for spec in args.grid]
    if args.seeds is not None:  # --seeds 0 is refused, not a sweep without seeds
        if any(a.key == SEED_KEY for a in axes):
            raise SystemExit("lit-lora sweep: give seeds as --seeds N or as --grid seed_everything=…, not both")
        axes.append(seed_axis(args.seeds))
    check_given_keys([a.key for a in axes], base_args, bool(getattr(args, "slurm", False)), args.seeds)
    name = args.name or Path(args.config[0]).stem
    if not name or "/" in name or name in (".", ".."):
        raise SystemExit(f"lit-lora sweep: --name {name!r} is not a directory name")
    sweep_dir = Path(args.runs_dir) / name
    axes = stored_axis_order(sweep_dir, axes)
    labels = axis_labels([a.key for a in axes])
    resolved = resolve_points(expand(axes), args.config, base_args, name, print_config)
    sweep_dir.mkdir(parents=True, exist_ok=True)  # after every point resolved: a refused sweep leaves nothing

    with sweep_lock(sweep_dir, name):  # a concurrent command's points and submissions are kept (sweep.lock)
        sweep = load_sweep(sweep_dir) if (sweep_dir / "sweep.json").is_file() else {"slurm": [], "points": []}
        check_same_axes(sweep, sweep_dir, [a.key for a in axes])
        keep_known_names(resolved, sweep)
        current = write_point_configs(sweep, sweep_dir, name, resolved)
        sweep["points"].sort(key=lambda p: p["index"])
        sweep.update({"name": name, "configs": list(args.config), "base_args": list(base_args),
                      "axes": [{"key": a.key, "label": labels[a.key], "values": list(a.values)} for a in axes],
                      "updated": now()})
        sweep = {k: sweep[k] for k in ("name", "configs", "base_args", "axes", "updated", "points", "slurm")}
        save_sweep(sweep_dir, sweep)
        lines = [str((sweep_dir / p["config"]).resolve()) for p in sweep["points"]]
        (sweep_dir / POINTS_FILE).write_text("\n".join(lines) + "\n")
    return sweep_dir, sweep, current


# ---- local -------------------------------------------------------------------------------------------
def run_point(run_dir: Path, config: Path, resume_from: Optional[Path] = None) -> int:
    """``lit-lora fit --config <config>`` in a subprocess, output to ``log.txt``; the exit status.
    ``resume_from``: a stopped point's checkpoint (``--ckpt_path``; the log is appended to)."""
    cmd = [sys.executable, "-m", "lit_lora.commands", "fit", "--config", str(config)]
    if resume_from is not None:
        cmd += ["--ckpt_path", str(resume_from)]
    status = {"runner": "local", "host": socket.gethostname(), "started": now(), "config_sha256": config_digest(config)}
    started = time.perf_counter()
    with open(run_dir / LOG_FILE, "a" if resume_from is not None else "w") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**os.environ,
                                                                                "TOKENIZERS_PARALLELISM": "false"})
        try:
            import psutil

            status["pid_started_ts"] = psutil.Process(proc.pid).create_time()
        except Exception:
            pass
        status["pid"] = proc.pid
        (run_dir / STATUS_FILE).write_text(dumps(status, indent=2) + "\n")
        try:
            returncode = proc.wait()
        except BaseException:  # Ctrl-C: the point is interrupted (no exit status), the sweep stops
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    status.update(returncode=returncode, ended=now(), wall_s=round(time.perf_counter() - started, 1))
    (run_dir / STATUS_FILE).write_text(dumps(status, indent=2) + "\n")
    return returncode


def set_aside(moved: Path) -> str:
    """What a moved attempt's preemption checkpoint means for the retry (it starts from step 0), or ``""``."""
    saved = hpc_checkpoints(moved)
    if not saved:
        return ""
    return (f", with its {saved[-1].name}: not resumed (the run ended with its own error, or ran other settings "
            "than point.yaml holds now), so the point starts again from step 0")


def headline(run_dir: Path) -> str:
    """`` (tuned_val_loss 1.2345)`` or the last validation metric, for the progress line."""
    from lit_lora.sweep.report import point_metrics

    metrics = point_metrics(run_dir)
    for key in ("tuned_val_loss", "val_loss"):
        if metrics.get(key) is not None:
            return f" ({key} {metrics[key]:.4f})"
    return ""


def run_local(sweep_dir: Path, sweep: dict, points: list[dict]) -> int:
    name, total = sweep["name"], len(points)
    tasks = slurm_tasks(sweep) if sweep.get("slurm") else {}
    failed = 0
    for number, point in enumerate(points, 1):
        run_dir = sweep_dir / point["run_dir"]
        prefix = f"{number}/{total} {point['name']}"
        state = point_state(sweep_dir, point, tasks.get(point["index"]))
        if state.state == FINISHED:
            say(name, f"{prefix} finished earlier, skipped")
            continue
        if state.state in (RUNNING, PENDING):
            say(name, f"{prefix} is {state.state} ({state.detail}), skipped")
            continue
        saved = state.checkpoint  # a stopped point's: it resumes
        if saved is not None:
            say(name, f"{prefix} resuming from {saved} ({state.detail.split(';')[0]}; log: {run_dir / LOG_FILE})")
        else:
            moved = move_earlier_attempt(run_dir)
            if moved:
                say(name, f"{prefix}: the earlier attempt ({state.state}) moved to {moved}{set_aside(moved)}")
            say(name, f"{prefix} running (log: {run_dir / LOG_FILE})")
        started = time.perf_counter()
        try:
            run_point(run_dir, run_dir / POINT_CONFIG, resume_from=saved)
        except KeyboardInterrupt:
            raise SystemExit(f"[lit-lora] sweep {name}: interrupted during {point['name']}; rerun the same command "
                             "to resume (finished points are skipped)") from None
        seconds = time.perf_counter() - started
        state = point_state(sweep_dir, point)
        if state.state == FINISHED:
            say(name, f"{prefix} finished in {seconds:.0f} s{headline(run_dir)}")
        else:
            failed += 1
            tail = "\n".join("    " + line for line in failure_lines(state.log).splitlines())
            say(name, f"{prefix} FAILED ({state.detail}) after {seconds:.0f} s; log: {state.log}\n{tail}")
    return failed


# ---- SLURM -------------------------------------------------------------------------------------------
def array_spec(indices: list[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts, ordered = [], sorted(indices)
    start = prev = ordered[0]
    for i in ordered[1:] + [None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ",".join(parts)


def submit(sweep_dir: Path, sweep: dict, points: list[dict], args: argparse.Namespace) -> int:
    """Submit ``points`` that are not finished, queued or running, deciding under the sweep's lock from the
    ``sweep.json`` on disk: a concurrent command's submission is seen, not submitted again nor overwritten."""
    with sweep_lock(sweep_dir, sweep["name"]):
        return submit_unlocked(sweep_dir, load_sweep(sweep_dir), points, args)


def submit_unlocked(sweep_dir: Path, sweep: dict, points: list[dict], args: argparse.Namespace) -> int:
    name = sweep["name"]
    script = Path(args.script)
    if not script.is_file():
        raise SystemExit(f"lit-lora sweep --slurm: {script} not found: run from the lit-lora repository root or "
                         "pass --script path/to/<script>.sbatch (after --slurm)")
    root = script.resolve().parent.parent  # the sbatch scripts run <submit dir>/slurm/launch.sh
    if not (root / "slurm" / "launch.sh").is_file():
        raise SystemExit(f"lit-lora sweep --slurm: {root / 'slurm' / 'launch.sh'} not found beside {script}")
    tasks = slurm_tasks(sweep)
    todo = []
    for point in points:
        state = point_state(sweep_dir, point, tasks.get(point["index"]))
        if state.state in (FINISHED, RUNNING, PENDING):
            say(name, f"{point['name']} is {state.state}{f' ({state.detail})' if state.detail else ''}, not submitted")
            continue
        if state.state == STOPPED:  # slurm/launch.sh's fit auto-resumes from the hpc_ckpt_N.ckpt in its run dir
            say(name, f"{point['name']} is stopped ({state.detail.split(';')[0]}): resumes from {state.checkpoint}")
        else:
            moved = move_earlier_attempt(sweep_dir / point["run_dir"])
            if moved:
                say(name, f"{point['name']}: the earlier attempt ({state.state}) moved to {moved}{set_aside(moved)}")
        todo.append(point["index"])
    if not todo:
        say(name, "nothing to submit")
        return 0
    array = array_spec(todo) + (f"%{args.max_parallel}" if args.max_parallel else "")
    sweep_abs = sweep_dir.resolve()
    cmd = ["sbatch", "--parsable", f"--array={array}", f"--job-name={name}", f"--output={sweep_abs}/slurm-%A_%a.out",
           *args.sbatch, str(script.resolve()), str(sweep_abs / POINTS_FILE)]
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"lit-lora sweep --slurm: sbatch failed ({result.returncode}): {result.stderr.strip()}\n"
                         f"  {shlex.join(cmd)}")
    job_id = result.stdout.strip().split(";")[0]
    sweep["slurm"].append({"job_id": job_id, "indices": todo, "array": array, "submitted": now(),
                           "command": cmd, "submit_dir": str(root)})
    save_sweep(sweep_dir, sweep)
    by_index = {p["index"]: p["name"] for p in points}
    say(name, f"submitted {len(todo)} point(s) as SLURM array job {job_id} (--array={array}) from {root}")
    for index in todo:
        print(f"  {job_id}_{index}  {by_index[index]}")
    first = by_index[todo[0]]
    print(f"  watch:   squeue -r -j {job_id}\n"
          f"  logs:    tail -f {sweep_dir / first / LOG_FILE}\n"
          f"  report:  lit-lora sweep report {sweep_dir}   (any time: finished, running, pending, failed points)\n"
          f"  cancel:  scancel {job_id}", flush=True)
    return 0
