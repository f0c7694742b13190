"""The base-vs-fine-tuned report: ``report.json``, ``report.md`` and, when the run logged one, ``loss_curve.png``.

    from lit_lora.evaluation.report import build_report, write_report
    report = build_report(base, tuned, run_info={...}, overlap={...}, examples={...}, settings={...})
    write_report(report, "runs/x/compare")

Metrics sit side by side with their deltas; rows the fine-tuned model got right and the base got
wrong (and the reverse) are listed in full. When evaluated rows were trained on, the first line of
``report.md`` says so.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Optional

from lit_lora.evaluation.text_metrics import normalize_answer
from lit_lora.strict_json import dumps



def row_rouge_l(pred: str, ref: str) -> float:
    from torchmetrics.functional.text import rouge_score

    return float(rouge_score(pred, ref, rouge_keys="rougeL")["rougeL_fmeasure"])


def is_right(pred: str, ref: str, right_if: str) -> bool:
    """``exact``: equal after whitespace normalisation; a number t: row ROUGE-L F1 of at least t."""
    if right_if == "exact":
        return normalize_answer(pred) == normalize_answer(ref)
    return row_rouge_l(pred, ref) >= float(right_if)


def example_rows(base: list[dict], tuned: list[dict], right_if: str = "exact", limit: int = 5) -> dict:
    """Rows fixed by fine-tuning (tuned right, base wrong) and broken by it (the reverse)."""
    if len(base) != len(tuned):
        raise ValueError(f"base evaluated {len(base)} rows, tuned {len(tuned)}: not the same split")
    fixed, broken = [], []
    for b, t in zip(base, tuned):
        if b["prompt"] != t["prompt"]:
            raise ValueError(f"row {b.get('index')}: base and tuned prompts differ; not the same split")
        base_right, tuned_right = is_right(b["prediction"], b["reference"], right_if), \
            is_right(t["prediction"], t["reference"], right_if)
        if base_right != tuned_right:
            row = {"index": b.get("index"), "prompt": b["prompt"], "reference": b["reference"],
                   "base": b["prediction"], "tuned": t["prediction"]}
            (fixed if tuned_right else broken).append(row)
    return {"right_if": right_if, "fixed_count": len(fixed), "broken_count": len(broken),
            "fixed": fixed[:limit], "broken": broken[:limit]}


def side_by_side(base: dict, tuned: dict) -> dict:
    rows = {}
    for name in sorted(set(base) | set(tuned)):
        b, t = base.get(name), tuned.get(name)
        delta = t - b if isinstance(b, (int, float)) and isinstance(t, (int, float)) else None
        rows[name] = {"base": b, "tuned": t, "delta": delta}
    return rows


def build_report(base: dict, tuned: dict, run_info: dict, overlap: Optional[dict], examples: dict,
                 settings: dict) -> dict:
    """``base`` / ``tuned``: ``{"metrics": {...}, "per_group": {...}}`` of the same split and settings."""
    groups = {}
    for name in sorted(set(base.get("per_group", {})) | set(tuned.get("per_group", {}))):
        groups[name] = side_by_side(base.get("per_group", {}).get(name, {}), tuned.get("per_group", {}).get(name, {}))
    return {"trained_on_evaluated_rows": bool(overlap and overlap.get("count")),
            "overlap": overlap, "metrics": side_by_side(base["metrics"], tuned["metrics"]),
            "per_group": groups, "run": run_info, "settings": settings, "examples": examples}


COUNTS = {"hit_max_new_tokens", "generated_rows"}  # row counts, logged as floats (torchmetrics)


def _fmt(value, count: bool = False) -> str:
    if value is None:
        return "–"
    if count and isinstance(value, float) and value.is_integer():
        return f"{int(value):+d}"
    if isinstance(value, float):
        return f"{value:+.4f}" if math.isfinite(value) and abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


MIN_WORDS = {"loss", "perplexity", "ppl", "error", "wer", "cer", "hit", "unparseable"}
MAX_WORDS = {"accuracy", "acc", "f1", "bleu", "precision", "recall", "exact", "em", "mcc", "chrf", "codebleu",
             "sacrebleu"}


def direction(metric: str) -> Optional[str]:
    """``"min"`` for losses, ``"max"`` for accuracy-like scores, ``None`` when the name does not tell."""
    words = [w for w in re.split(r"[/_\-.@ ]+", metric.lower()) if w]
    if any(w in MIN_WORDS for w in words):
        return "min"
    if any(w in MAX_WORDS or w.startswith("rouge") or w.startswith("f1") for w in words):
        return "max"
    return None


def _table(rows: dict) -> list[str]:
    """Metrics side by side; ``better`` says which way a delta (fine-tuned − base) is an improvement."""
    lines = ["| metric | base | fine-tuned | delta | better |", "|---|---:|---:|---:|---|"]
    for name, r in rows.items():
        count = name.rsplit("/", 1)[-1] in COUNTS
        base = _fmt(r["base"], count).lstrip("+")
        tuned = _fmt(r["tuned"], count).lstrip("+")
        better = {"min": "lower", "max": "higher"}.get(direction(name), "")
        lines.append(f"| {name} | {base} | {tuned} | {_fmt(r['delta'], count)} | {better} |")
    return lines


def _fence(text: str) -> str:
    return "````text\n" + text + "\n````"


def to_markdown(report: dict) -> str:
    overlap = report["overlap"] or {}
    lines = []
    if report["trained_on_evaluated_rows"]:
        lines.append(f"**WARNING: evaluated on rows the model was trained on** ({overlap['count']} of "
                     f"{overlap['evaluated']} evaluated rows duplicate training rows; allow_train_overlap was set).")
        lines.append("")
    run = report["run"]
    lines += ["# Base model vs fine-tuned", "",
              f"- model: `{run.get('model_name_or_path')}`, method: {run.get('method')}, "
              f"checkpoint: `{run.get('checkpoint')}`",
              f"- evaluated split: {run.get('split')} ({run.get('rows')} rows), same rows and settings for both columns",
              f"- overlap with training rows (exact duplicates of the normalised input): "
              f"{overlap.get('count', 'not checked')} of {overlap.get('evaluated', '?')}",
              f"- trainable / total parameters: {run.get('trainable_params', '?'):,} / {run.get('total_params', '?'):,}"
              if isinstance(run.get("trainable_params"), int) else "- trainable / total parameters: not recorded",
              training_cost_line(run),
              f"- evaluation peak memory: {run.get('eval_peak_memory_mib')} MiB ({run.get('eval_peak_memory_kind')})",
              f"- generation: {dumps(report['settings'])}", "", "## Metrics", ""]
    lines += _table(report["metrics"])
    for group, rows in report["per_group"].items():
        lines += ["", f"### {group}", ""] + _table(rows)
    if run.get("loss_curve"):
        lines += ["", "## Training loss", "", f"![loss curve]({run['loss_curve']})"]
    elif run.get("metrics_csv"):
        lines += ["", "## Training loss", "", "No curve: the run's `metrics.csv` has no `train_loss` or `val_loss` "
                  "row (a run shorter than `trainer.log_every_n_steps` logs none)."]
    else:
        lines += ["", "## Training loss", "", "No curve: the run directory has no `metrics.csv` (a CSV logger's; "
                  "a W&B-only run has its curves in W&B)."]
    ex = report["examples"]
    rule = "exact match" if ex["right_if"] == "exact" else f"row ROUGE-L F1 ≥ {ex['right_if']}"
    for key, title in (("fixed", "Fine-tuned right, base wrong"), ("broken", "Base right, fine-tuned wrong")):
        lines += ["", f"## {title} ({ex[key + '_count']} rows; right = {rule})", ""]
        if not ex[key]:
            hint = (" (a looser rule: `--right_if 0.5`, a row ROUGE-L F1 threshold)" if ex["right_if"] == "exact"
                    else "")
            lines.append(f"No such row{hint}.")
        for row in ex[key]:
            lines += [f"### row {row['index']}", "", "Prompt:", "", _fence(row["prompt"]), "", "Reference:", "",
                      _fence(row["reference"]), "", "Base:", "", _fence(row["base"]), "", "Fine-tuned:", "",
                      _fence(row["tuned"]), ""]
    return "\n".join(lines) + "\n"


def plot_loss_curve(metrics_csv: Path, out_png: Path) -> Optional[Path]:
    """Plot ``train_loss`` (and ``val_loss``) of a CSVLogger ``metrics.csv``; None when it has neither."""
    if not metrics_csv.is_file():
        return None
    series: dict[str, list[tuple[float, float]]] = {"train_loss": [], "val_loss": []}
    with metrics_csv.open() as f:
        for row in csv.DictReader(f):
            for name in series:
                if row.get(name) not in (None, "") and row.get("step") not in (None, ""):
                    series[name].append((float(row["step"]), float(row[name])))
    if not any(series.values()):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in series.items():
        if points:
            ax.plot(*zip(*points), label=name, marker="o" if name == "val_loss" else None)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def write_report(report: dict, out_dir: str | Path) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(dumps(report, indent=2, default=str))
    (out / "report.md").write_text(to_markdown(report))
    return out / "report.md", out / "report.json"


def training_cost_line(run: dict) -> str:
    """The training run's wall time and peak memory, or what was not recorded (no ``run_summary.json`` found)."""
    wall, peak = run.get("train_wall_time_s"), run.get("train_peak_memory_mib")
    if wall is None and peak is None:
        return "- training wall time and peak memory: not recorded (no run_summary.json in the run directory)"
    wall_text = f"{wall} s" if wall is not None else "not recorded"
    peak_text = f"{peak} MiB ({run.get('train_peak_memory_kind') or '?'})" if peak is not None else "not recorded"
    return f"- training wall time: {wall_text}; training peak memory: {peak_text}"


HEADLINE = ("loss", "perplexity", "bleu", "rougeL_fmeasure", "exact_match", "accuracy", "f1_macro")


def console_summary(report: dict, md: Path, js: Path, predictions: list) -> str:
    """A few lines for the console: the headline metrics base -> fine-tuned, and where the report and the
    ``predictions`` files (base, then fine-tuned: named by ``evaluation.predictions_file``) went."""
    lines = ["[lit-lora] base -> fine-tuned on "
             f"{report['run'].get('rows')} {report['run'].get('split')} rows:"]
    for name, row in report["metrics"].items():
        if name.rsplit("/", 1)[-1] in HEADLINE and row.get("base") is not None and row.get("tuned") is not None:
            better = {"min": "lower is better", "max": "higher is better"}.get(direction(name), "")
            lines.append(f"  {name:<16}{row['base']:.4g} -> {row['tuned']:.4g} ({_fmt(row.get('delta'))}; {better})")
    lines.append(f"  {'report':<16}{md} (and {js.name})")
    lines.append(f"  {'predictions':<16}{', '.join(str(path) for path in predictions)}")
    return "\n".join(lines)
