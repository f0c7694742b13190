"""What a sweep command run again keeps from the points it wrote before: their names, order and configs.

A point is its settings, not its name. Rerunning a sweep with the ``--grid`` options in another order, a value
added that changes how the others are labelled (``a/b`` is ``a_b`` until ``a_b`` joins the axis), or a value
spelled another way (``1e-3`` for ``0.001``) must find the points that already ran, not write new ones that
train the same configs again (or refuse a finished point whose config did not change).

    from lit_lora.sweep.known import kept_text, keep_known_names, stored_axis_order
    axes = stored_axis_order(sweep_dir, axes)       # before the points are expanded and named
    keep_known_names(resolved, sweep)               # after sweep.json is read
    text = kept_text(previous, text)                # per point.yaml, before it is compared and written
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import yaml

from lit_lora.sweep.grid import Axis, Point, parsed_value
from lit_lora.sweep.state import SWEEP_FILE, load_sweep


def stored_axis_order(sweep_dir: Path, axes: list[Axis]) -> list[Axis]:
    """``axes`` in the order ``sweep.json`` lists them when they are the same keys: the order names the points
    (``r=4-lr=0.001`` or ``lr=0.001-r=4``), so another order of ``--grid`` options would rename every one."""
    if not (Path(sweep_dir) / SWEEP_FILE).is_file():
        return axes
    before = [a.get("key") for a in load_sweep(sweep_dir).get("axes", [])]
    by_key = {a.key: a for a in axes}
    if sorted(before, key=str) != sorted(by_key):
        return axes  # other axes: refused with the sweep's own message
    return [by_key[key] for key in before]


def settings(overrides: dict) -> tuple:
    """A point's settings as ``lit-lora fit`` reads them: ``1e-3`` and ``0.001`` are one."""
    return tuple(sorted((key, parsed_value(str(value))) for key, value in overrides.items()))


def keep_known_names(resolved: list[tuple[Point, str]], sweep: dict) -> None:
    """Give each point that ``sweep.json`` already lists under another name (same settings) that name and its
    labels, so it keeps its index, run directory and results; a name another point of this command takes
    stays with that point."""
    known: dict[tuple, dict] = {}
    for entry in sorted(sweep.get("points", []), key=lambda p: p.get("index", 0)):
        if isinstance(entry.get("overrides"), dict):
            known.setdefault(settings(entry["overrides"]), entry)
    names = {point.name for point, _ in resolved}
    for point, _ in resolved:
        entry = known.get(settings(point.overrides))
        if entry is None or entry["name"] == point.name or entry["name"] in names:
            continue
        names.discard(point.name)
        names.add(entry["name"])
        point.name, point.labels = entry["name"], dict(entry.get("labels") or point.labels)


def kept_text(previous: Optional[str], text: str) -> str:
    """``previous`` when it holds the same config as ``text`` (only its comment header, which spells the
    values as given, differs): a finished point is not refused and a stopped one still resumes."""
    if previous is None or previous == text:
        return text
    try:
        same = yaml.safe_load(previous) == yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return previous if same else text
