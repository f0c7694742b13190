"""``lit-lora sweep report runs/<sweep>``: every point's metrics in one table, best marked, seeds averaged, plots.

    lit-lora sweep report runs/demo
    # [lit-lora] sweep demo: 5 points (4 finished, 1 failed); wrote runs/demo/report.md, runs/demo/report.csv
    #   and runs/demo/plots/vs_r.png, runs/demo/plots/vs_trainable_params.png

Per point (from its run directory, ``trainer.log_dir`` of its run): the last value of every validation metric
in ``metrics.csv`` (``val_loss``, ``val_matched/accuracy`` …), ``test_*`` / ``val_*`` from ``metrics.json``
(written by ``lit-lora test`` / ``validate`` into the same directory), the base and tuned validation loss from
``before_after.json``, and from ``run_summary.json`` the trainable and total parameters, wall time and peak
memory. ``report.csv`` has one row per point (every point of ``sweep.json``, whatever its state);
``report.md`` marks the best finished point per metric (**bold** ★: lowest for losses / perplexity, highest
for accuracy, F1, precision, recall, BLEU, ROUGE, exact match; other metrics are not ranked), shows mean ± std
over seeds for points that differ only by seed, links the plots (each metric against each swept value, and
against the trainable parameters), and lists every point that is not finished with its state
(``lit_lora.sweep.state``) and the last lines of its log.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Optional

from lit_lora.sweep import plots as sweep_plots
from lit_lora.sweep.plots import mean_std
from lit_lora.evaluation.report import direction
from lit_lora.sweep.state import FINISHED, log_tail, load_sweep, point_states, read_json

SUMMARY_KEYS = ("trainable_params", "total_params", "trainable_pct", "wall_time_s", "peak_memory_mib",
                "peak_memory_kind", "global_step", "method")
TABLE_METRICS = 10  # metric columns in report.md (all are in report.csv)
PLOT_METRICS = 4
UNRANKED = {"base_val_loss"}  # the untrained model's loss: the same for every point of a model, never "best"
LOG_LINES = 20


# ---- one point -----------------------------------------------------------------------------------------
def last_validation_metrics(path: Path) -> dict[str, float]:
    """Last logged value of each validation column of a Lightning ``metrics.csv`` (``val…`` columns). A ``nan``
    or ``inf`` is that last value: an earlier finite one in its place would rank a diverged point best."""
    if not path.is_file():
        return {}
    found: dict[str, float] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith("val") and value not in (None, ""):
                    number = csv_number(value)
                    if number is not None:
                        found[key] = number
    return found


def csv_number(text: str) -> Optional[float]:
    """A ``metrics.csv`` cell as a float, ``nan`` and ``inf`` included; ``None`` for anything else."""
    try:
        return float(text)
    except ValueError:
        return None


def point_metrics(run_dir: Path) -> dict[str, Any]:
    """Metrics and run facts of one run directory (see the module doc); empty for a run that wrote nothing."""
    metrics: dict[str, Any] = dict(last_validation_metrics(run_dir / "metrics.csv"))
    for written in (run_dir / "metrics.json", *latest_evaluations(run_dir)):
        evaluated = read_json(written).get("metrics") or {}
        metrics.update({k: float(v) for k, v in evaluated.items() if isinstance(v, (int, float))})
    before_after = read_json(run_dir / "before_after.json")
    for key in ("tuned_val_loss", "base_val_loss"):
        if isinstance(before_after.get(key), (int, float)):
            metrics[key] = float(before_after[key])
    summary = read_json(run_dir / "run_summary.json")
    for key in SUMMARY_KEYS:
        if summary.get(key) is not None:
            metrics[key] = summary[key]
    if summary.get("trainable_params") and summary.get("total_params") and "trainable_pct" not in summary:
        metrics["trainable_pct"] = round(100 * summary["trainable_params"] / summary["total_params"], 4)
    return metrics


def latest_evaluations(run_dir: Path) -> list[Path]:
    """The ``metrics.json`` of the last ``lit-lora validate`` and ``test`` of a run (``validate_N`` / ``test_N``
    beside its checkpoints, ``lit_lora.cluster.run_dir.evaluation_dirs``: the highest N that wrote one)."""
    found = []
    for stage in ("validate", "test"):
        numbered = [(int(d.name.rsplit("_", 1)[1]), d) for d in run_dir.glob(f"{stage}_*")
                    if d.name.rsplit("_", 1)[1].isdigit() and (d / "metrics.json").is_file()]
        found += [max(numbered)[1] / "metrics.json"] if numbered else []
    return found


# ---- the sweep -----------------------------------------------------------------------------------------
def collect(sweep_dir: Path) -> tuple[dict, list[dict], list[str], list[str]]:
    """``sweep.json``, one row per point, the axis labels and the metric names found."""
    sweep = load_sweep(sweep_dir)
    rows = []
    for point, state in point_states(sweep_dir, sweep):
        metrics = point_metrics(sweep_dir / point["run_dir"])
        rows.append({"point": point["name"], "index": point["index"], "state": state.state, "detail": state.detail,
                     "labels": point.get("labels", {}), "metrics": metrics, "log": state.log,
                     "run_dir": point["run_dir"]})
    labels: list[str] = []
    for row in rows:
        labels += [k for k in row["labels"] if k not in labels]
    names = {k for row in rows for k in row["metrics"] if k not in SUMMARY_KEYS}

    def order(name: str) -> tuple:
        rank = 0 if name == "tuned_val_loss" else 1 if name == "base_val_loss" else 2 if name.startswith("val") \
            else 3 if name.startswith("test") else 4
        return rank, name.count("/"), name

    return sweep, rows, labels, sorted(names, key=order)


def best_values(rows: list[dict], metrics: list[str], value=lambda row, m: row["metrics"].get(m)) -> dict[str, float]:
    best = {}
    for metric in metrics:
        way = direction(metric) if metric not in UNRANKED else None
        values = [v for row in rows if row["state"] == FINISHED and isinstance(v := value(row, metric), (int, float))
                  and math.isfinite(v)]
        if way and values:
            best[metric] = min(values) if way == "min" else max(values)
    return best


def groups_over_seeds(rows: list[dict]) -> list[dict]:
    """Finished points that differ only by ``seed``, with each metric's values."""
    groups: dict[tuple, dict] = {}
    for row in rows:
        if row["state"] != FINISHED:
            continue
        key = tuple((k, v) for k, v in row["labels"].items() if k != "seed")
        group = groups.setdefault(key, {"name": "-".join(f"{k}={v}" for k, v in key) or "base", "labels": dict(key),
                                        "rows": []})
        group["rows"].append(row)
    return list(groups.values())


def fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1000):
        return f"{int(value):,}"
    return f"{value:.4g}"


def marked(value: Any, best: Optional[float]) -> str:
    text = fmt(value)
    return f"**{text}** ★" if best is not None and value == best else text


# ---- plots ---------------------------------------------------------------------------------------------
def plot_metrics(metrics: list[str]) -> list[str]:
    ranked = [m for m in metrics if direction(m) and m.count("/") <= 1 and m not in UNRANKED]
    return ranked[:PLOT_METRICS]


def draw_plots(groups: list[dict], labels: list[str], metrics: list[str], out_dir: Path) -> list[tuple[str, Path]]:
    """The report's plots (``lit_lora.sweep.plots``) of the ranked set-level metrics."""
    return sweep_plots.draw_plots(groups, labels, plot_metrics(metrics), out_dir)


# ---- report.csv / report.md ----------------------------------------------------------------------------
def write_csv(rows: list[dict], labels: list[str], metrics: list[str], path: Path) -> None:
    columns = ["point", "state", "detail", *labels, *metrics, *SUMMARY_KEYS, "run_dir"]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            values = {"point": row["point"], "state": row["state"], "detail": row["detail"], "run_dir": row["run_dir"]}
            values.update({k: row["labels"].get(k, "") for k in labels})
            values.update({k: row["metrics"].get(k, "") for k in (*metrics, *SUMMARY_KEYS)})
            writer.writerow(values)


def header_lines(sweep: dict, rows: list[dict], metrics: list[str], shown: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    lines = [f"# Sweep `{sweep['name']}`", "",
             f"{len(rows)} points: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", "",
             "- config: " + " + ".join(f"`{c}`" for c in sweep.get("configs", [])),
             *([f"- base overrides: `{' '.join(sweep['base_args'])}`"] if sweep.get("base_args") else []),
             *[f"- `{a['key']}` ({a['label']}): {', '.join(a['values'])}" for a in sweep.get("axes", [])],
             *[f"- SLURM array job {s['job_id']} (`--array={s['array']}`), submitted {s['submitted']}"
               for s in sweep.get("slurm", [])], ""]
    if len(shown) < len([m for m in metrics]):
        lines += [f"Columns: {len(shown)} of {len(metrics)} metrics; all are in [report.csv](report.csv).", ""]
    return lines


def points_lines(rows: list[dict], labels: list[str], shown: list[str]) -> list[str]:
    best = best_values(rows, shown)
    header = ["point", "state", *labels, *shown, "trainable params", "trainable %", "wall s", "peak MiB"]
    ranking = ("Best finished point per metric in **bold** ★ (lowest loss, highest score; the untrained "
               "base_val_loss is not ranked)." if shown else
               "No point logged a validation or test metric yet: validation runs every `trainer.val_check_interval` "
               "steps, so a point with fewer `trainer.max_steps` has none; `lit-lora test` writes test metrics.")
    lines = ["## Points", "", ranking, "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        m = row["metrics"]
        cells = [f"[{row['point']}]({row['run_dir']}/)", row["state"], *[row["labels"].get(k, "n/a") for k in labels],
                 *[marked(m.get(k), best.get(k)) for k in shown], fmt(m.get("trainable_params")),
                 fmt(m.get("trainable_pct")), fmt(m.get("wall_time_s")), fmt(m.get("peak_memory_mib"))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def seed_mean(values: list) -> tuple[Optional[float], Optional[float]]:
    """Mean ± std over seeds; ``nan`` when a seed's value is not finite (a diverged seed is not averaged away)."""
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        return math.nan, None
    return mean_std(values)


def seeds_lines(groups: list[dict], shown: list[str]) -> list[str]:
    if not any(len(g["rows"]) > 1 for g in groups):
        return []
    means = {g["name"]: {k: seed_mean([r["metrics"].get(k) for r in g["rows"]]) for k in shown} for g in groups}
    group_best = best_values([{"state": FINISHED, "name": g["name"]} for g in groups], shown,
                             value=lambda row, k: means[row["name"]][k][0])
    lines = ["## Mean ± std over seeds", "", "Finished points that differ only by `seed`; std over seeds "
             "(sample standard deviation; — for one seed; nan when a seed's value is). Best mean in **bold** ★.",
             "",
             "| group | seeds | " + " | ".join(shown) + " |", "|" + "---|" * (len(shown) + 2)]
    for g in groups:
        cells = [g["name"], str(len(g["rows"]))]
        for k in shown:
            mean, std = means[g["name"]][k]
            spread = "" if mean is None or math.isnan(mean) else f" ± {fmt(std)}" if std is not None else " ± —"
            cells.append("" if mean is None else marked(mean, group_best.get(k)) + spread)
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""]


def unfinished_lines(rows: list[dict], sweep_dir: Path, log_lines: int) -> list[str]:
    unfinished = [r for r in rows if r["state"] != FINISHED]
    lines = ["## Not finished", ""] if unfinished else []
    for row in unfinished:
        detail = f" ({row['detail']})" if row["detail"] else ""
        lines += [f"### {row['point']}: {row['state']}{detail}", ""]
        log = row["log"]
        if log is None:
            lines += ["No log yet.", ""]
            continue
        try:
            where = log.resolve().relative_to(sweep_dir.resolve()).as_posix()
        except ValueError:
            where = str(log)
        lines += [f"Last lines of [{where}]({where}):", "", "```", log_tail(log, log_lines), "```", ""]
    return lines


def markdown(sweep: dict, rows: list[dict], labels: list[str], metrics: list[str], groups: list[dict],
             plots: list[tuple[str, Path]], sweep_dir: Path, log_lines: int) -> str:
    shown = [m for m in metrics if m.count("/") <= 1][:TABLE_METRICS]
    lines = header_lines(sweep, rows, metrics, shown) + points_lines(rows, labels, shown) + seeds_lines(groups, shown)
    if plots:
        lines += ["## Plots", ""]
        for title, path in plots:
            rel = path.relative_to(sweep_dir).as_posix()
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    lines += unfinished_lines(rows, sweep_dir, log_lines)
    return "\n".join(lines)


def build_report(sweep_dir: str | Path, log_lines: int = LOG_LINES) -> dict:
    """Write ``report.md``, ``report.csv`` and ``plots/*.png`` into ``sweep_dir``; returns what was written."""
    sweep_dir = Path(sweep_dir)
    sweep, rows, labels, metrics = collect(sweep_dir)
    groups = groups_over_seeds(rows)
    plots = draw_plots(groups, labels, metrics, sweep_dir / "plots")
    csv_path = sweep_dir / "report.csv"
    write_csv(rows, labels, metrics, csv_path)
    md_path = sweep_dir / "report.md"
    md_path.write_text(markdown(sweep, rows, labels, metrics, groups, plots, sweep_dir, log_lines))
    return {"md": md_path, "csv": csv_path, "plots": [p for _, p in plots], "sweep": sweep, "rows": rows}


def write_report(sweep_dir: str | Path, log_lines: int = LOG_LINES) -> tuple[Path, Path]:
    """``build_report``; returns the paths of ``report.md`` and ``report.csv``."""
    built = build_report(sweep_dir, log_lines)
    return built["md"], built["csv"]
