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

import argparse
import csv
import math
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Optional

from lit_lora.sweep.grid import as_number
from lit_lora.sweep.state import FINISHED, log_tail, load_sweep, point_states, read_json

SUMMARY_KEYS = ("trainable_params", "total_params", "trainable_pct", "wall_time_s", "peak_memory_mib",
                "peak_memory_kind", "global_step", "method")
MIN_WORDS = {"loss", "perplexity", "ppl", "error", "wer", "cer"}
MAX_WORDS = {"accuracy", "acc", "f1", "bleu", "precision", "recall", "exact", "em", "mcc", "chrf", "codebleu",
             "sacrebleu"}
TABLE_METRICS = 10  # metric columns in report.md (all are in report.csv)
PLOT_METRICS = 4
UNRANKED = {"base_val_loss"}  # the untrained model's loss: the same for every point of a model, never "best"
LOG_LINES = 20


# ---- one point -----------------------------------------------------------------------------------------
def last_validation_metrics(path: Path) -> dict[str, float]:
    """Last logged value of each validation column of a Lightning ``metrics.csv`` (``val…`` columns)."""
    if not path.is_file():
        return {}
    found: dict[str, float] = {}
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith("val") and value not in (None, ""):
                    number = as_number(value)
                    if number is not None:
                        found[key] = float(number)
    return found


def point_metrics(run_dir: Path) -> dict[str, Any]:
    """Metrics and run facts of one run directory (see the module doc); empty for a run that wrote nothing."""
    metrics: dict[str, Any] = dict(last_validation_metrics(run_dir / "metrics.csv"))
    evaluated = read_json(run_dir / "metrics.json").get("metrics") or {}
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


def direction(metric: str) -> Optional[str]:
    """``"min"`` for losses, ``"max"`` for accuracy-like scores, ``None`` when the name does not tell."""
    words = [w for w in re.split(r"[/_\-.@ ]+", metric.lower()) if w]
    if any(w in MIN_WORDS for w in words):
        return "min"
    if any(w in MAX_WORDS or w.startswith("rouge") or w.startswith("f1") for w in words):
        return "max"
    return None


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


def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


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


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def draw_plots(groups: list[dict], labels: list[str], metrics: list[str], out_dir: Path) -> list[tuple[str, Path]]:
    """Each metric against each swept value (one line per combination of the other axes, mean ± std over
    seeds), and against the trainable parameters; returns (title, png path)."""
    chosen = plot_metrics(metrics)
    if not groups or not chosen:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    made = []

    def stats(group: dict, metric: str):
        return mean_std([r["metrics"].get(metric) for r in group["rows"]])

    def figure(title: str):
        cols = min(len(chosen), 2)
        rows = math.ceil(len(chosen) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
        for ax in axes.flat[len(chosen):]:
            ax.set_visible(False)
        fig.suptitle(title)
        return fig, list(axes.flat)

    for axis in [a for a in labels if a != "seed"]:
        values = []
        for g in groups:
            if axis in g["labels"] and g["labels"][axis] not in values:
                values.append(g["labels"][axis])
        if len(values) < 2:
            continue
        numeric = all(as_number(v) is not None for v in values)
        positions = {v: (float(as_number(v)) if numeric else i) for i, v in enumerate(values)}
        fig, axes = figure(f"metrics vs {axis}")
        series: dict[str, list[dict]] = {}
        for g in groups:
            if axis in g["labels"]:
                rest = "-".join(f"{k}={v}" for k, v in g["labels"].items() if k != axis) or axis
                series.setdefault(rest, []).append(g)
        for ax, metric in zip(axes, chosen):
            for label, members in series.items():
                members = sorted(members, key=lambda g: positions[g["labels"][axis]])
                points = [(positions[g["labels"][axis]], *stats(g, metric)) for g in members]
                points = [p for p in points if p[1] is not None]
                if not points:
                    continue
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0 for p in points],
                            marker="o", capsize=3, label=label if len(series) > 1 else None)
            ax.set_xlabel(axis)
            ax.set_ylabel(metric)
            if numeric:
                finite = [p for p in positions.values() if p > 0]
                if len(finite) == len(positions) and max(finite) / min(finite) >= 20:
                    ax.set_xscale("log")
                ordered = sorted(positions.items(), key=lambda kv: kv[1])
                ax.set_xticks([p for _, p in ordered], [v for v, _ in ordered])
            else:
                ax.set_xticks(list(positions.values()), list(positions), rotation=20)
            ax.grid(alpha=0.3)
            if len(series) > 1:
                ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"vs_{safe(axis)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append((f"metrics vs {axis}", path))

    with_params = [g for g in groups if isinstance(g["rows"][0]["metrics"].get("trainable_params"), (int, float))]
    if len({g["rows"][0]["metrics"]["trainable_params"] for g in with_params}) >= 2:
        fig, axes = figure("metrics vs trainable parameters")
        for ax, metric in zip(axes, chosen):
            for g in with_params:
                mean, std = stats(g, metric)
                if mean is None:
                    continue
                x = g["rows"][0]["metrics"]["trainable_params"]
                ax.errorbar([x], [mean], yerr=[std or 0], marker="o", capsize=3, color="tab:blue")
                ax.annotate(g["name"], (x, mean), fontsize=7, xytext=(4, 4), textcoords="offset points")
            ax.set_xscale("log")
            ax.margins(x=0.2, y=0.15)
            ax.set_xlabel("trainable parameters")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / "vs_trainable_params.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        made.append(("metrics vs trainable parameters", path))
    return made


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


def markdown(sweep: dict, rows: list[dict], labels: list[str], metrics: list[str], groups: list[dict],
             plots: list[tuple[str, Path]], sweep_dir: Path, log_lines: int) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    shown = [m for m in metrics if m.count("/") <= 1][:TABLE_METRICS]
    lines = [f"# Sweep `{sweep['name']}`", "",
             f"{len(rows)} points: " + ", ".join(f"{n} {s}" for s, n in counts.items()) + ".", "",
             "- config: " + " + ".join(f"`{c}`" for c in sweep.get("configs", [])),
             *([f"- base overrides: `{' '.join(sweep['base_args'])}`"] if sweep.get("base_args") else []),
             *[f"- `{a['key']}` ({a['label']}): {', '.join(a['values'])}" for a in sweep.get("axes", [])],
             *[f"- SLURM array job {s['job_id']} (`--array={s['array']}`), submitted {s['submitted']}"
               for s in sweep.get("slurm", [])], ""]
    if len(shown) < len([m for m in metrics]):
        lines += [f"Columns: {len(shown)} of {len(metrics)} metrics; all are in [report.csv](report.csv).", ""]
    best = best_values(rows, shown)
    header = ["point", "state", *labels, *shown, "trainable params", "trainable %", "wall s", "peak MiB"]
    lines += ["## Points", "", "Best finished point per metric in **bold** ★ (lowest loss, highest score; the "
              "untrained base_val_loss is not ranked).", "",
              "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        m = row["metrics"]
        cells = [f"[{row['point']}]({row['run_dir']}/)", row["state"], *[row["labels"].get(k, "n/a") for k in labels],
                 *[marked(m.get(k), best.get(k)) for k in shown], fmt(m.get("trainable_params")),
                 fmt(m.get("trainable_pct")), fmt(m.get("wall_time_s")), fmt(m.get("peak_memory_mib"))]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if any(len(g["rows"]) > 1 for g in groups):
        means = {g["name"]: {k: mean_std([r["metrics"].get(k) for r in g["rows"]]) for k in shown} for g in groups}
        group_best = best_values([{"state": FINISHED, "name": g["name"]} for g in groups], shown,
                                 value=lambda row, k: means[row["name"]][k][0])
        lines += ["## Mean ± std over seeds", "", "Finished points that differ only by `seed`; std over seeds "
                  "(sample standard deviation; — for one seed). Best mean in **bold** ★.", "",
                  "| group | seeds | " + " | ".join(shown) + " |", "|" + "---|" * (len(shown) + 2)]
        for g in groups:
            cells = [g["name"], str(len(g["rows"]))]
            for k in shown:
                mean, std = means[g["name"]][k]
                text = "" if mean is None else marked(mean, group_best.get(k)) + (f" ± {fmt(std)}" if std is not None
                                                                                  else " ± —")
                cells.append(text)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if plots:
        lines += ["## Plots", ""]
        for title, path in plots:
            rel = path.relative_to(sweep_dir).as_posix()
            lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    unfinished = [r for r in rows if r["state"] != FINISHED]
    if unfinished:
        lines += ["## Not finished", ""]
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


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="lit-lora sweep report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", help="a sweep directory (runs/<sweep>, holding sweep.json)")
    parser.add_argument("--log_lines", type=int, default=LOG_LINES, help="log lines shown per unfinished point")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
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
