"""Grid axes, their product and readable point names for ``lit-lora sweep``.

    >>> from lit_lora.sweep.grid import expand, parse_axis, seed_axis
    >>> axes = [parse_axis("model.init_args.adapter.init_args.r=4,16"),
    ...         parse_axis("model.init_args.optim.lr=1e-3,3e-3"), seed_axis(2)]
    >>> [p.name for p in expand(axes)][:3]
    ['r=4-lr=0.001-seed=0', 'r=4-lr=0.001-seed=1', 'r=4-lr=0.003-seed=0']
    >>> parse_axis("model.init_args.adapter=lit_lora.adapters.LoRA,lit_lora.adapters.FullFineTuning").values
    ('lit_lora.adapters.LoRA', 'lit_lora.adapters.FullFineTuning')
    >>> value_label("lit_lora.adapters.FullFineTuning"), value_label("3e-5"), value_label("FacebookAI/roberta-large")
    ('FullFineTuning', '3e-05', 'FacebookAI_roberta-large')

An axis is any config key in dotted form (what ``lit-lora fit --KEY V`` accepts) with comma-separated
values; commas inside ``[…]``, ``{…}`` or quotes do not split (``target_modules=[q,v],all-linear``).
A point's name joins ``label=value`` per axis with ``-``: the label is the key's last part (``init_args``
skipped; more parts where two axes would share one, ``seed_everything`` is ``seed``), a class path
shows its class name, a number its Python value, anything else its text with ``/`` and other
characters that do not belong in a directory name replaced by ``_``. Two spellings of one value (``1e-4`` and
``0.0001``, ``true`` and ``True``) are refused: they would be two points running the same config.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import yaml
from jsonargparse import get_loader

SEED_KEY = "seed_everything"
CLASS_PATH = re.compile(r"(?:[A-Za-z_]\w*\.)+[A-Z]\w*")  # dotted path ending in a class name
MAX_LABEL = 48


@dataclass(frozen=True)
class Axis:
    key: str  # dotted config key, e.g. model.init_args.optim.lr
    values: tuple[str, ...]  # as given on the command line


@dataclass
class Point:
    """One combination: ``overrides`` key -> value (as given), ``labels`` axis label -> value label."""

    name: str
    overrides: dict[str, str]
    labels: dict[str, str]
    not_applicable: list[str] = field(default_factory=list)  # axes the point's class does not accept


def split_values(text: str) -> list[str]:
    """``"4,16"`` -> ``["4", "16"]``; commas inside brackets, braces or quotes stay."""
    values, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
            continue
        current.append(char)
    values.append("".join(current).strip())
    return values


def parse_axis(spec: str) -> Axis:
    """``KEY=V1,V2,…`` (``--KEY`` also accepted) -> ``Axis``; an empty key or value is an error."""
    key, sep, values = spec.partition("=")
    key = key.strip().lstrip("-")
    parts = split_values(values) if sep else []
    if not key or not parts or any(v == "" for v in parts):
        raise ValueError(f"--grid {spec!r}: expected KEY=V1,V2,… (e.g. model.init_args.optim.lr=1e-3,3e-3)")
    seen: dict = {}
    for value in parts:
        meaning = parsed_value(value)
        if meaning in seen:  # two points would run one config under two names
            same = f"{value} is given twice" if seen[meaning] == value else \
                f"{seen[meaning]} and {value} are the same value (as lit-lora fit reads them)"
            raise ValueError(f"--grid {key}: {same}; give it once")
        seen[meaning] = value
    return Axis(key, tuple(parts))


def parsed_value(text: str):
    """What a value means, to compare two spellings: ``1e-4`` and ``0.0001``, ``true`` and ``True``, ``1`` and
    ``1.0`` are one value, as jsonargparse reads them (its own YAML loader); ``1`` and ``true`` are not
    (``True == 1`` in Python)."""
    try:
        value = get_loader("yaml")(text)
    except yaml.YAMLError:
        value = text
    return _value_key(value)


def _value_key(value):
    if isinstance(value, bool) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, (int, float)):
        return ("number", value)  # 1 == 1.0, with one hash
    if isinstance(value, list):
        return ("list", tuple(_value_key(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((str(k), _value_key(v)) for k, v in value.items())))
    return ("text", str(value))


def seed_axis(seeds: int) -> Axis:
    if seeds < 1:
        raise ValueError(f"--seeds {seeds}: expected 1 or more")
    return Axis(SEED_KEY, tuple(str(s) for s in range(seeds)))


def axis_labels(keys: list[str]) -> dict[str, str]:
    """Short, unique label per key: its last part, or as many last parts as needed to tell keys apart."""
    parts = {k: [p for p in k.split(".") if p != "init_args"] or [k] for k in keys}
    depth = {k: 1 for k in keys}
    while True:
        labels = {k: "seed" if k == SEED_KEY else ".".join(parts[k][-depth[k]:]) for k in keys}
        clashing = [k for k in keys if list(labels.values()).count(labels[k]) > 1]
        grow = [k for k in clashing if depth[k] < len(parts[k])]
        if not grow:
            return labels if not clashing else {k: k for k in keys}
        for k in grow:
            depth[k] += 1


def as_number(value: str):
    """``"16"`` -> 16, ``"1e-3"`` -> 0.001, anything else -> ``None``."""
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number and abs(number) != float("inf") else None


def value_label(value: str) -> str:
    """How a value appears in a point name (see the module doc)."""
    text = value.strip()
    if CLASS_PATH.fullmatch(text):
        return text.rsplit(".", 1)[1]
    number = as_number(text)
    if number is not None:
        return repr(number)
    text = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_") or "_"
    return text[:MAX_LABEL]


def expand(axes: list[Axis]) -> list[Point]:
    """The product of ``axes`` (the first varies slowest), one named ``Point`` each (``base`` for no axes)."""
    keys = [a.key for a in axes]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the same key is swept twice: {sorted(k for k in keys if keys.count(k) > 1)}")
    labels = axis_labels(keys)
    value_labels = {a.key: unique_value_labels(a.values) for a in axes}
    points = []
    for combo in itertools.product(*(a.values for a in axes)):
        overrides = dict(zip(keys, combo))
        point_labels = {labels[k]: value_labels[k][v] for k, v in overrides.items()}
        points.append(Point(point_name(point_labels), overrides, point_labels))
    return points


def unique_value_labels(values: tuple[str, ...]) -> dict[str, str]:
    """``value_label`` of each value; where two would be equal, a sanitised full text, then a numbered one."""
    short = {v: value_label(v) for v in values}
    if len(set(short.values())) == len(values):
        return short
    full = {v: re.sub(r"[^A-Za-z0-9._+=-]+", "_", v).strip("_") or "_" for v in values}
    if len(set(full.values())) == len(values):
        return full
    return {v: f"{short[v]}.{i}" for i, v in enumerate(values)}


def point_name(labels: dict[str, str]) -> str:
    return "-".join(f"{k}={v}" for k, v in labels.items()) or "base"


def override_args(overrides: dict[str, str]) -> list[str]:
    """``--KEY V`` pairs, a key after every key it lies under (a class path before its ``init_args``)."""
    ordered = sorted(overrides.items(), key=lambda kv: kv[0].count("."))
    return [arg for key, value in ordered for arg in (f"--{key}", value)]
