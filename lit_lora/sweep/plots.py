"""The plots of ``lit-lora sweep report``: each metric against each swept value and against trainable parameters.

    from lit_lora.sweep.plots import draw_plots
    draw_plots(groups, labels, ["val_loss"], Path("runs/demo/plots"))   # -> [("metrics vs r", .../vs_r.png), …]

One figure per swept axis (one line per combination of the other axes, mean ± std over seeds) and one against
the trainable parameters, one panel per metric; PNGs via matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

import math
import re
import statistics
from pathlib import Path
from typing import Optional

from lit_lora.sweep.grid import as_number

def mean_std(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation of the finite numbers among ``values`` (std ``None`` for one)."""
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name)


def _stats(group: dict, metric: str) -> tuple[Optional[float], Optional[float]]:
    return mean_std([r["metrics"].get(metric) for r in group["rows"]])


def _figure(plt, title: str, panels: int):
    cols = min(panels, 2)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[panels:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes.flat)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _axis_values(groups: list[dict], axis: str) -> list[str]:
    values: list[str] = []
    for g in groups:
        if axis in g["labels"] and g["labels"][axis] not in values:
            values.append(g["labels"][axis])
    return values


def _set_x_axis(ax, axis: str, positions: dict[str, float], numeric: bool) -> None:
    ax.set_xlabel(axis)
    if numeric:
        finite = [p for p in positions.values() if p > 0]
        if len(finite) == len(positions) and max(finite) / min(finite) >= 20:
            ax.set_xscale("log")
        ordered = sorted(positions.items(), key=lambda kv: kv[1])
        ax.set_xticks([p for _, p in ordered], [v for v, _ in ordered])
    else:
        ax.set_xticks(list(positions.values()), list(positions), rotation=20)


def _plot_axis(plt, groups: list[dict], axis: str, chosen: list[str], out_dir: Path) -> Optional[Path]:
    """Every metric against one swept value; ``None`` when the axis has fewer than two values."""
    values = _axis_values(groups, axis)
    if len(values) < 2:
        return None
    numeric = all(as_number(v) is not None for v in values)
    positions = {v: (float(as_number(v)) if numeric else i) for i, v in enumerate(values)}
    series: dict[str, list[dict]] = {}
    for g in groups:
        if axis in g["labels"]:
            rest = "-".join(f"{k}={v}" for k, v in g["labels"].items() if k != axis) or axis
            series.setdefault(rest, []).append(g)
    fig, axes = _figure(plt, f"metrics vs {axis}", len(chosen))
    for ax, metric in zip(axes, chosen):
        for label, members in series.items():
            members = sorted(members, key=lambda g: positions[g["labels"][axis]])
            points = [(positions[g["labels"][axis]], *_stats(g, metric)) for g in members]
            points = [p for p in points if p[1] is not None]
            if points:
                ax.errorbar([p[0] for p in points], [p[1] for p in points], yerr=[p[2] or 0 for p in points],
                            marker="o", capsize=3, label=label if len(series) > 1 else None)
        ax.set_ylabel(metric)
        _set_x_axis(ax, axis, positions, numeric)
        ax.grid(alpha=0.3)
        if len(series) > 1:
            ax.legend(fontsize=7)
    return _save(plt, fig, out_dir / f"vs_{safe(axis)}.png")


def _plot_params(plt, groups: list[dict], chosen: list[str], out_dir: Path) -> Optional[Path]:
    """Every metric against the trainable parameters; ``None`` unless at least two counts differ."""
    with_params = [g for g in groups if isinstance(g["rows"][0]["metrics"].get("trainable_params"), (int, float))]
    if len({g["rows"][0]["metrics"]["trainable_params"] for g in with_params}) < 2:
        return None
    fig, axes = _figure(plt, "metrics vs trainable parameters", len(chosen))
    for ax, metric in zip(axes, chosen):
        for g in with_params:
            mean, std = _stats(g, metric)
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
    return _save(plt, fig, out_dir / "vs_trainable_params.png")


def draw_plots(groups: list[dict], labels: list[str], chosen: list[str], out_dir: Path) -> list[tuple[str, Path]]:
    """Each of the ``chosen`` metrics against each swept value, and against the trainable parameters.

    Returns (title, png path) per figure; nothing when there is no group or no metric.
    """
    if not groups or not chosen:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("*.png"):
        old.unlink()
    made = []
    for axis in [a for a in labels if a != "seed"]:
        path = _plot_axis(plt, groups, axis, chosen, out_dir)
        if path is not None:
            made.append((f"metrics vs {axis}", path))
    path = _plot_params(plt, groups, chosen, out_dir)
    if path is not None:
        made.append(("metrics vs trainable parameters", path))
    return made
